//! The process's open-file limit: a broker or a load generator with tens of thousands of
//! connections needs one descriptor each, and the usual soft limit (1,024 or 20,000) is far
//! below what the hard limit allows.

/// Raises the soft limit on open files to at least `want` if it may (raising the hard limit
/// too when the process is privileged), else as far as the hard limit; returns the soft limit
/// in force.
#[cfg(unix)]
pub(crate) fn raise_open_files(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(u64::MAX);
    if soft >= want {
        return soft;
    }
    let hard = now.maximum.unwrap_or(u64::MAX);
    let wanted = Rlimit { current: Some(want), maximum: Some(hard.max(want)) };
    if setrlimit(Resource::Nofile, wanted).is_ok() {
        return want;
    }
    let capped = Rlimit { current: Some(hard.min(want)), maximum: now.maximum };
    match setrlimit(Resource::Nofile, capped) {
        Ok(()) => hard.min(want),
        Err(_) => soft,
    }
}

/// Elsewhere the limit is left as it is.
#[cfg(not(unix))]
pub(crate) fn raise_open_files(_want: u64) -> u64 {
    u64::MAX
}
