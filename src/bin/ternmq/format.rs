//! `ternmq sub -F`: mosquitto_sub's output format strings.
//!
//! `%t` topic, `%p` payload, `%x`/`%X` payload in hex, `%l` payload length, `%q` QoS, `%r`
//! retain flag, `%m` packet id, `%I` ISO 8601 time, `%U` Unix time with nanoseconds, `%j` the
//! message as JSON (payload escaped), `%J` the same with the payload inserted as JSON, the
//! MQTT 5 properties `%A` topic alias, `%C` content type, `%D` correlation data, `%E` message
//! expiry, `%F` payload format, `%P` user properties, `%R` response topic, `%S` subscription
//! identifier, and `%%`. A conversion may carry `-` (align left), `0` (pad with zeros), a field
//! width and a precision, as in printf. `@` followed by a strftime letter prints the time
//! (`@Y-@m-@dT@H:@M:@S`, `@N` nanoseconds, `@@` an at sign), and `\n`, `\t`, `\r`, `\v`, `\a`,
//! `\e`, `\0`, `\\` are escapes. Times are UTC (`%I` ends in `+0000`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ternmq::codec::{PayloadFormat, Publish};

/// The strftime letters `@` takes.
const TIME_LETTERS: &str = "YmdHMSNszFTjeyb";

/// Checks a format string as mosquitto_sub does before connecting: every `%`, `@` and `\` must
/// be followed by something it knows.
pub(crate) fn check(format: &str) -> Result<(), String> {
    let b = format.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                i += 1;
                if b.get(i) == Some(&b'-') {
                    i += 1;
                }
                if b.get(i) == Some(&b'0') {
                    i += 1;
                }
                let digits = |i: &mut usize| -> Result<(), String> {
                    let start = *i;
                    while b.get(*i).is_some_and(u8::is_ascii_digit) {
                        *i += 1;
                    }
                    if *i - start > 4 {
                        return Err(format!(
                            "-F: field width or precision {:?} is too large (at most 9999)",
                            &format[start..*i]
                        ));
                    }
                    Ok(())
                };
                digits(&mut i)?;
                if b.get(i) == Some(&b'.') {
                    i += 1;
                    digits(&mut i)?;
                }
                match b.get(i) {
                    None => return Err("-F: incomplete format specifier at the end".into()),
                    Some(c) if b"%ACDEFIlmPpqRrStjJUxX".contains(c) => {}
                    Some(&c) => {
                        return Err(format!("-F: invalid format specifier '%{}'", c as char));
                    }
                }
            }
            b'@' => {
                i += 1;
                match b.get(i) {
                    None => return Err("-F: incomplete time specifier '@' at the end".into()),
                    Some(b'@') => {}
                    Some(&c) if TIME_LETTERS.as_bytes().contains(&c) => {}
                    Some(&c) => {
                        return Err(format!(
                            "-F: unsupported time specifier '@{}' (supported: @{})",
                            c as char,
                            TIME_LETTERS.chars().map(String::from).collect::<Vec<_>>().join(" @")
                        ));
                    }
                }
            }
            b'\\' => {
                i += 1;
                match b.get(i) {
                    None => return Err("-F: incomplete escape '\\' at the end".into()),
                    Some(c) if b"\\0aenrtv".contains(c) => {}
                    Some(&c) => return Err(format!("-F: invalid escape '\\{}'", c as char)),
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// `message` printed as `format` says, received at `now` (since the Unix epoch).
pub(crate) fn render(format: &str, message: &Publish, now: Duration, pretty: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = format.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 1 < b.len() => {
                i += 1;
                let mut spec = Spec { left: false, zero: false, width: 0, precision: None };
                if b[i] == b'-' && i + 1 < b.len() {
                    spec.left = true;
                    i += 1;
                }
                if b[i] == b'0' && i + 1 < b.len() {
                    spec.zero = true;
                    i += 1;
                }
                while i + 1 < b.len() && b[i].is_ascii_digit() {
                    spec.width = spec.width * 10 + usize::from(b[i] - b'0');
                    i += 1;
                }
                if b[i] == b'.' && i + 1 < b.len() {
                    i += 1;
                    let mut p = 0;
                    while i + 1 < b.len() && b[i].is_ascii_digit() {
                        p = p * 10 + usize::from(b[i] - b'0');
                        i += 1;
                    }
                    spec.precision = Some(p);
                }
                conversion(&mut out, b[i], &spec, message, now, pretty);
            }
            b'@' if i + 1 < b.len() => {
                i += 1;
                out.extend_from_slice(time_field(b[i], now).as_bytes());
            }
            b'\\' if i + 1 < b.len() => {
                i += 1;
                out.push(match b[i] {
                    b'0' => 0,
                    b'a' => 7,
                    b'e' => 0x1b,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 0x0b,
                    other => other,
                });
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

struct Spec {
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
}

impl Spec {
    /// `value` padded to the field width (and cut to the precision, for text).
    fn text(&self, out: &mut Vec<u8>, value: &[u8], number: bool) {
        let value = match self.precision {
            Some(p) if !number => &value[..p.min(value.len())],
            _ => value,
        };
        let pad = self.width.saturating_sub(value.len());
        if self.left {
            out.extend_from_slice(value);
            out.extend(std::iter::repeat_n(b' ', pad));
        } else {
            let fill = if self.zero && number { b'0' } else { b' ' };
            out.extend(std::iter::repeat_n(fill, pad));
            out.extend_from_slice(value);
        }
    }

    fn number(&self, out: &mut Vec<u8>, value: Option<u64>) {
        match value {
            Some(v) => self.text(out, v.to_string().as_bytes(), true),
            None => {
                out.extend(std::iter::repeat_n(if self.zero { b'0' } else { b' ' }, self.width))
            }
        }
    }
}

fn conversion(out: &mut Vec<u8>, c: u8, spec: &Spec, m: &Publish, now: Duration, pretty: bool) {
    let p = &m.properties;
    match c {
        b'%' => out.push(b'%'),
        b't' => spec.text(out, m.topic.as_str().as_bytes(), false),
        b'p' => spec.text(out, &m.payload, false),
        b'x' | b'X' => {
            let hex: String = m
                .payload
                .iter()
                .map(|b| if c == b'x' { format!("{b:02x}") } else { format!("{b:02X}") })
                .collect();
            spec.text(out, hex.as_bytes(), false);
        }
        b'l' => spec.number(out, Some(m.payload.len() as u64)),
        b'm' => spec.number(out, Some(m.packet_id.map_or(0, |id| u64::from(id.get())))),
        b'q' => out.push(b'0' + m.qos as u8),
        b'r' => out.push(if m.retain { b'1' } else { b'0' }),
        b'I' => spec.text(out, iso8601(now).as_bytes(), false),
        b'U' => {
            out.extend_from_slice(format!("{}.{:09}", now.as_secs(), now.subsec_nanos()).as_bytes())
        }
        b'j' | b'J' => out.extend_from_slice(&json(m, now, c == b'j', pretty)),
        b'A' => spec.number(out, p.topic_alias.map(|a| u64::from(a.get()))),
        b'C' => {
            spec.text(out, p.content_type.as_ref().map_or("", |s| s.as_str()).as_bytes(), false)
        }
        b'D' => out.extend_from_slice(p.correlation_data.as_deref().unwrap_or_default()),
        b'E' => spec.number(out, p.message_expiry_interval.map(u64::from)),
        b'F' => spec
            .number(out, p.payload_format_indicator.map(|f| u64::from(f == PayloadFormat::Utf8))),
        b'P' => {
            let pairs: Vec<String> = p
                .user_properties
                .iter()
                .map(|(k, v)| format!("{}:{}", k.as_str(), v.as_str()))
                .collect();
            out.extend_from_slice(pairs.join(" ").as_bytes());
        }
        b'R' => {
            if let Some(t) = &p.response_topic {
                spec.text(out, t.as_str().as_bytes(), false);
            }
        }
        b'S' => spec.number(out, p.subscription_identifiers.first().map(|s| u64::from(s.get()))),
        _ => {}
    }
}

/// The message as mosquitto_sub's `%j` (payload escaped as a string) or `%J` (payload as is,
/// assumed to be JSON) print it.
pub(crate) fn json(m: &Publish, now: Duration, escaped: bool, pretty: bool) -> Vec<u8> {
    let mut fields: Vec<(&str, Vec<u8>)> = vec![
        ("tst", quoted(tst(now).as_bytes())),
        ("topic", quoted(m.topic.as_str().as_bytes())),
        ("qos", (m.qos as u8).to_string().into_bytes()),
        ("retain", u8::from(m.retain).to_string().into_bytes()),
        ("payloadlen", m.payload.len().to_string().into_bytes()),
    ];
    if let Some(id) = m.packet_id {
        fields.push(("mid", id.get().to_string().into_bytes()));
    }
    let payload = if escaped {
        quoted(&m.payload)
    } else if m.payload.is_empty() {
        b"null".to_vec()
    } else {
        m.payload.to_vec()
    };
    fields.push(("payload", payload));
    let mut out = b"{".to_vec();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if pretty {
            out.extend_from_slice(b"\n\t");
        }
        out.extend_from_slice(format!("\"{k}\":").as_bytes());
        if pretty {
            out.push(b'\t');
        }
        out.extend_from_slice(v);
    }
    if pretty {
        out.push(b'\n');
    }
    out.push(b'}');
    out
}

/// A JSON string: quotes, backslashes and control characters escaped as mosquitto_sub does
/// (`\u00XX`).
fn quoted(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in bytes {
        if b == b'"' || b == b'\\' || b < 0x20 {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.push(b'"');
    out
}

/// Seconds since the epoch as (year, month, day, hour, minute, second), UTC.
pub(crate) fn civil(now: Duration) -> (u64, u64, u64, u64, u64, u64) {
    let secs = now.as_secs();
    let (y, m, d) = civil_from_days(secs / 86_400);
    let t = secs % 86_400;
    (y, m, d, t / 3600, t / 60 % 60, t % 60)
}

/// The proleptic Gregorian date of day `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn iso8601(now: Duration) -> String {
    let (y, mo, d, h, mi, s) = civil(now);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+0000")
}

/// mosquitto_sub's `tst`: microseconds and a Z.
fn tst(now: Duration) -> String {
    let (y, mo, d, h, mi, s) = civil(now);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z", now.subsec_micros())
}

fn time_field(c: u8, now: Duration) -> String {
    let (y, mo, d, h, mi, s) = civil(now);
    match c {
        b'@' => "@".into(),
        b'Y' => format!("{y:04}"),
        b'y' => format!("{:02}", y % 100),
        b'm' => format!("{mo:02}"),
        b'b' => {
            ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
                [(mo - 1) as usize]
                .into()
        }
        b'd' => format!("{d:02}"),
        b'e' => format!("{d:2}"),
        b'H' => format!("{h:02}"),
        b'M' => format!("{mi:02}"),
        b'S' => format!("{s:02}"),
        b'N' => format!("{:09}", now.subsec_nanos()),
        b's' => now.as_secs().to_string(),
        b'z' => "+0000".into(),
        b'F' => format!("{y:04}-{mo:02}-{d:02}"),
        b'T' => format!("{h:02}:{mi:02}:{s:02}"),
        b'j' => {
            let jan1 = days_before(y);
            format!("{:03}", now.as_secs() / 86_400 - jan1 + 1)
        }
        _ => String::new(),
    }
}

/// Days from 1970-01-01 to January 1st of `year`.
fn days_before(year: u64) -> u64 {
    (1970..year).map(|y| if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) { 366 } else { 365 }).sum()
}

/// Now, since the Unix epoch.
pub(crate) fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ternmq::codec::QoS;
    use ternmq::topic::TopicName;

    fn msg() -> Publish {
        let mut p = Publish::new(TopicName::new("a/b").unwrap(), "hi\"x");
        p.qos = QoS::AtLeastOnce;
        p.retain = true;
        p.packet_id = std::num::NonZeroU16::new(7);
        p
    }

    const T: Duration = Duration::from_millis(1_767_323_045_678); // 2026-01-02T03:04:05.678Z

    fn r(f: &str) -> String {
        check(f).unwrap();
        String::from_utf8(render(f, &msg(), T, false)).unwrap()
    }

    #[test]
    fn conversions_as_mosquitto_sub() {
        assert_eq!(r("%t %p %q %r %l %m"), "a/b hi\"x 1 1 4 7");
        assert_eq!(r("[%5t][%-5t][%.1t][%05l]"), "[  a/b][a/b  ][a][00004]");
        assert_eq!(r("%x %X"), "68692278 68692278");
        assert_eq!(r("%I|%U"), "2026-01-02T03:04:05+0000|1767323045.678000000");
        assert_eq!(r("@Y-@m-@d @H:@M:@S @@ @j\\t%%"), "2026-01-02 03:04:05 @ 002\t%");
        assert_eq!(
            r("%j"),
            "{\"tst\":\"2026-01-02T03:04:05.678000Z\",\"topic\":\"a/b\",\"qos\":1,\"retain\":1,\
             \"payloadlen\":4,\"mid\":7,\"payload\":\"hi\\u0022x\"}"
        );
    }

    #[test]
    fn bad_formats_are_refused_with_the_specifier() {
        assert!(check("%k").unwrap_err().contains("'%k'"));
        assert!(check("abc%").unwrap_err().contains("incomplete"));
        assert!(check("@Q").unwrap_err().contains("'@Q'"));
        assert!(check("\\q").unwrap_err().contains("'\\q'"));
        assert!(check("%99999p").unwrap_err().contains("too large"));
        assert!(check("%.99999p").unwrap_err().contains("too large"));
        check("%9999.9999p").unwrap();
    }
}
