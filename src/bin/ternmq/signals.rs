//! The signals the programs answer: SIGINT and SIGTERM stop them cleanly, SIGHUP (the broker's
//! only) is reported and otherwise ignored.
//!
//! The handlers are installed when [`Signals::install`] returns, so from then on a signal never
//! takes its default action (ending the process at once, without the MQTT goodbye).

/// What arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGINT or SIGTERM: stop.
    Stop(&'static str),
    /// SIGHUP.
    Hangup,
}

/// Installed signal handlers.
pub(crate) struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs handlers for SIGINT and SIGTERM, and SIGHUP too if `hangup`. Must be called
    /// inside a Tokio runtime.
    pub(crate) fn install(hangup: bool) -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                hup: if hangup { Some(signal(SignalKind::hangup())?) } else { None },
            })
        }
        #[cfg(not(unix))]
        {
            let _ = hangup;
            Ok(Signals {})
        }
    }

    /// The next signal.
    pub(crate) async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let hup = async {
                match self.hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = self.int.recv() => Signal::Stop("SIGINT"),
                _ = self.term.recv() => Signal::Stop("SIGTERM"),
                () = hup => Signal::Hangup,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop("Ctrl-C")
        }
    }
}

/// Installs the handlers (SIGHUP too if `hangup`) and waits on a thread of its own, calling
/// `each` for every signal until it returns `false`.
pub(crate) fn watch(
    hangup: bool,
    mut each: impl FnMut(Signal) -> bool + Send + 'static,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot watch for signals: {e}"))?;
    let mut signals = {
        let _inside = rt.enter();
        Signals::install(hangup).map_err(|e| format!("cannot watch for signals: {e}"))?
    };
    std::thread::Builder::new()
        .name("ternmq-signals".into())
        .spawn(move || {
            rt.block_on(async { while each(signals.next().await) {} });
        })
        .map_err(|e| format!("cannot watch for signals: {e}"))?;
    Ok(())
}
