//! `-D command identifier value`: MQTT 5 properties for `ternmq pub` and `ternmq sub`, named as
//! mosquitto_pub and mosquitto_sub name them.

use bytes::Bytes;
use ternmq::codec::{
    ConnectProperties, DisconnectProperties, MqttStr, PayloadFormat, PublishProperties,
    SubscribeProperties, UnsubscribeProperties, WillProperties,
};
use ternmq::topic::TopicName;

/// The properties given with `-D`, per packet.
#[derive(Default)]
pub(crate) struct Properties {
    pub(crate) connect: ConnectProperties,
    pub(crate) publish: PublishProperties,
    pub(crate) will: WillProperties,
    pub(crate) disconnect: DisconnectProperties,
    pub(crate) subscribe: SubscribeProperties,
    pub(crate) unsubscribe: UnsubscribeProperties,
    /// Whether any `-D` was given (they need MQTT 5).
    pub(crate) any: bool,
}

const CONNECT: &str = "session-expiry-interval, receive-maximum, maximum-packet-size, \
                       topic-alias-maximum, request-response-information, \
                       request-problem-information, user-property, authentication-method, \
                       authentication-data";
const PUBLISH: &str = "payload-format-indicator, message-expiry-interval, topic-alias, \
                       response-topic, correlation-data, content-type, user-property";
const WILL: &str = "will-delay-interval, payload-format-indicator, message-expiry-interval, \
                    response-topic, correlation-data, content-type, user-property";
const DISCONNECT: &str = "session-expiry-interval, reason-string, user-property";
const SUBSCRIBE: &str = "subscription-identifier, user-property";
const UNSUBSCRIBE: &str = "user-property";

impl Properties {
    /// Takes one `-D` from `it` (the three or four words after it).
    pub(crate) fn take(&mut self, it: &mut impl Iterator<Item = String>) -> Result<(), String> {
        let mut next = |what: &str| {
            it.next().ok_or_else(|| format!("-D needs a command, a property and a value ({what})"))
        };
        let command = next("the command is missing")?;
        let name = next("the property is missing")?;
        let value = next("the value is missing")?;
        self.any = true;
        if command == "auth" {
            return Err(format!(
                "-D {command}: AUTH properties are not supported yet (enhanced authentication \
                 is the client library's); connect, publish, will, subscribe, unsubscribe and \
                 disconnect are"
            ));
        }
        let at = format!("-D {command} {name}");
        let num = |v: &str| -> Result<u32, String> {
            v.parse().map_err(|_| format!("{at}: {v:?} is not a number"))
        };
        let text = |v: &str| MqttStr::new(v).map_err(|e| format!("{at}: {e}"));
        let flag = |v: &str| match v {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(format!("{at}: {v:?}: use 0 or 1")),
        };
        let format = |v: &str| match v {
            "0" => Ok(PayloadFormat::Unspecified),
            "1" => Ok(PayloadFormat::Utf8),
            _ => Err(format!("{at}: {v:?}: use 0 (bytes) or 1 (UTF-8)")),
        };
        let topic = |v: &str| TopicName::new(v).map_err(|e| format!("{at}: {e}"));
        let nonzero = |v: &str| -> Result<u32, String> {
            num(v).and_then(|n| if n == 0 { Err(format!("{at}: must not be 0")) } else { Ok(n) })
        };
        let u16_of = |n: u32| u16::try_from(n).map_err(|_| format!("{at}: {n} is above 65535"));
        if name == "user-property" {
            let second = it.next().ok_or_else(|| {
                format!("{at}: a user property needs a name and a value (-D {command} user-property NAME VALUE)")
            })?;
            let pair = (text(&value)?, text(&second)?);
            match command.as_str() {
                "connect" => self.connect.user_properties.push(pair),
                "publish" => self.publish.user_properties.push(pair),
                "will" => self.will.user_properties.push(pair),
                "disconnect" => self.disconnect.user_properties.push(pair),
                "subscribe" => self.subscribe.user_properties.push(pair),
                "unsubscribe" => self.unsubscribe.user_properties.push(pair),
                _ => return Err(unknown_command(&command)),
            }
            return Ok(());
        }
        let unknown =
            |list: &str| format!("{at}: {command} has no property {name:?}; it has {list}");
        match command.as_str() {
            "connect" => {
                let c = &mut self.connect;
                match name.as_str() {
                    "session-expiry-interval" => c.session_expiry_interval = Some(num(&value)?),
                    "receive-maximum" => {
                        c.receive_maximum = std::num::NonZeroU16::new(u16_of(nonzero(&value)?)?);
                    }
                    "maximum-packet-size" => {
                        c.maximum_packet_size = std::num::NonZeroU32::new(nonzero(&value)?);
                    }
                    "topic-alias-maximum" => c.topic_alias_maximum = Some(u16_of(num(&value)?)?),
                    "request-response-information" => {
                        c.request_response_information = Some(flag(&value)?);
                    }
                    "request-problem-information" => {
                        c.request_problem_information = Some(flag(&value)?);
                    }
                    "authentication-method" => c.authentication_method = Some(text(&value)?),
                    "authentication-data" => c.authentication_data = Some(Bytes::from(value)),
                    _ => return Err(unknown(CONNECT)),
                }
            }
            "publish" => {
                let p = &mut self.publish;
                match name.as_str() {
                    "payload-format-indicator" => {
                        p.payload_format_indicator = Some(format(&value)?)
                    }
                    "message-expiry-interval" => p.message_expiry_interval = Some(num(&value)?),
                    "topic-alias" => {
                        p.topic_alias = std::num::NonZeroU16::new(u16_of(nonzero(&value)?)?);
                    }
                    "response-topic" => p.response_topic = Some(topic(&value)?),
                    "correlation-data" => p.correlation_data = Some(Bytes::from(value)),
                    "content-type" => p.content_type = Some(text(&value)?),
                    _ => return Err(unknown(PUBLISH)),
                }
            }
            "will" => {
                let w = &mut self.will;
                match name.as_str() {
                    "will-delay-interval" => w.will_delay_interval = Some(num(&value)?),
                    "payload-format-indicator" => {
                        w.payload_format_indicator = Some(format(&value)?)
                    }
                    "message-expiry-interval" => w.message_expiry_interval = Some(num(&value)?),
                    "response-topic" => w.response_topic = Some(topic(&value)?),
                    "correlation-data" => w.correlation_data = Some(Bytes::from(value)),
                    "content-type" => w.content_type = Some(text(&value)?),
                    _ => return Err(unknown(WILL)),
                }
            }
            "subscribe" => match name.as_str() {
                "subscription-identifier" => {
                    let id = nonzero(&value)?;
                    if id > 268_435_455 {
                        return Err(format!("{at}: at most 268435455"));
                    }
                    self.subscribe.subscription_identifier = std::num::NonZeroU32::new(id);
                }
                _ => return Err(unknown(SUBSCRIBE)),
            },
            "unsubscribe" => return Err(unknown(UNSUBSCRIBE)),
            "disconnect" => {
                let d = &mut self.disconnect;
                match name.as_str() {
                    "session-expiry-interval" => d.session_expiry_interval = Some(num(&value)?),
                    "reason-string" => d.reason_string = Some(text(&value)?),
                    _ => return Err(unknown(DISCONNECT)),
                }
            }
            _ => return Err(unknown_command(&command)),
        }
        Ok(())
    }
}

fn unknown_command(command: &str) -> String {
    format!(
        "-D: unknown command {command:?}; use connect, publish, will, subscribe, unsubscribe or \
         disconnect"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn take(words: &str) -> Result<Properties, String> {
        let mut p = Properties::default();
        let mut it = words.split_whitespace().map(String::from);
        p.take(&mut it)?;
        Ok(p)
    }

    #[test]
    fn properties_land_in_their_packet() {
        let p = take("publish user-property k v").unwrap();
        assert_eq!(p.publish.user_properties[0].0.as_str(), "k");
        assert_eq!(p.publish.user_properties[0].1.as_str(), "v");
        let p = take("connect session-expiry-interval 60").unwrap();
        assert_eq!(p.connect.session_expiry_interval, Some(60));
        let p = take("publish message-expiry-interval 5").unwrap();
        assert_eq!(p.publish.message_expiry_interval, Some(5));
        let p = take("will will-delay-interval 3").unwrap();
        assert_eq!(p.will.will_delay_interval, Some(3));
    }

    #[test]
    fn mistakes_name_the_property() {
        let e = take("publish topic-alias 0").err().unwrap();
        assert!(e.starts_with("-D publish topic-alias: must not be 0"), "{e}");
        let e = take("publish colour red").err().unwrap();
        assert!(e.contains("has no property \"colour\""), "{e}");
        let e = take("connect user-property k").err().unwrap();
        assert!(e.contains("a name and a value"), "{e}");
        let p = take("unsubscribe user-property k v").unwrap();
        assert_eq!(p.unsubscribe.user_properties.len(), 1);
        let e = take("unsubscribe reason-string x").err().unwrap();
        assert!(e.contains("has no property"), "{e}");
        let e = take("auth authentication-method x").err().unwrap();
        assert!(e.contains("not supported yet"), "{e}");
        let p = take("subscribe subscription-identifier 5").unwrap();
        assert_eq!(p.subscribe.subscription_identifier.map(|i| i.get()), Some(5));
        let e = take("publish").err().unwrap();
        assert!(e.contains("-D needs"), "{e}");
    }
}
