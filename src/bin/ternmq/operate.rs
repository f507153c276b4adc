//! The broker program's operations plane: the HTTP admin API and the configuration reload that
//! SIGHUP and `POST /api/v1/reload` share.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use ternmq::broker::admin::{Request, Response};
use ternmq::http::{Reloaded, Reloader};
use ternmq::tokio::Control;

use crate::broker::{Settings, settings};

/// What the reload needs once the broker serves; cheap to clone (the signal thread holds one).
#[derive(Clone)]
pub(crate) struct Operations {
    args: Arc<[String]>,
    reloader: Arc<OnceLock<Reloader>>,
}

/// What only a restart changes, to tell when a reload found it different.
#[derive(PartialEq)]
struct Fixed {
    listeners: Vec<String>,
    persistence: Option<std::path::PathBuf>,
    durability: String,
    runtime: String,
    http: Option<String>,
    bridges: Vec<String>,
}

impl Fixed {
    fn of(s: &Settings) -> Fixed {
        Fixed {
            listeners: s
                .config
                .listeners
                .iter()
                .map(|l| {
                    let tls = l.tls.as_ref().map(|t| format!("{:?}", t.settings()));
                    format!("{} {} {tls:?} {:?} {}", l.addr, l.kind(), l.ws_path, l.proxy_protocol)
                })
                .collect(),
            persistence: s.persistence.clone(),
            durability: format!("{:?}", s.durability),
            runtime: format!("{:?}", s.runtime),
            // The tokens themselves: the options' Debug only counts them.
            http: s.http.as_ref().map(|h| {
                let tls = h.options.tls.as_ref().map(|t| format!("{:?}", t.settings()));
                format!("{} {:?} {tls:?}", h.bind, h.options.tokens)
            }),
            bridges: s.config.bridges.iter().map(|b| format!("{b:?}")).collect(),
        }
    }

    /// The names of what differs.
    fn changed(&self, new: &Fixed) -> Vec<String> {
        let mut names = Vec::new();
        if self.listeners != new.listeners {
            names.push("listener".to_string());
        }
        if self.persistence != new.persistence || self.durability != new.durability {
            names.push("persistence".to_string());
        }
        if self.runtime != new.runtime {
            names.push("runtime".to_string());
        }
        if self.http != new.http {
            names.push("http".to_string());
        }
        if self.bridges != new.bridges {
            names.push("bridge".to_string());
        }
        names
    }
}

impl Operations {
    /// For a broker started with `args`.
    pub(crate) fn new(args: Vec<String>) -> Operations {
        Operations { args: args.into(), reloader: Arc::new(OnceLock::new()) }
    }

    /// The broker is bound with `first`: reloads can happen, and the HTTP admin API starts if
    /// configured (the line to announce it is returned).
    pub(crate) fn start(
        &self,
        first: &Settings,
        control: Control,
    ) -> Result<Option<String>, String> {
        let reloader = reloader(Arc::clone(&self.args), first, control.clone());
        let _ = self.reloader.set(Arc::clone(&reloader));
        let Some(http) = &first.http else {
            return Ok(None);
        };
        let mut options = http.options.clone();
        options.reload = Some(Arc::new(move || logged("POST /api/v1/reload", &reloader)));
        let secured = !options.tokens.is_empty();
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let addr =
            ternmq::http::spawn_on_own_runtime(http.bind, control, options).map_err(|e| {
                format!("ternmq broker: cannot serve the HTTP admin API on {}: {e}", http.bind)
            })?;
        Ok(Some(format!(
            "HTTP admin API and metrics on {scheme}://{addr}/ ({})",
            if secured { "bearer tokens required" } else { "no token: loopback only" }
        )))
    }

    /// Reloads the configuration, logging what happened under `why` (SIGHUP, say).
    pub(crate) fn reload(&self, why: &str) -> Result<Reloaded, String> {
        match self.reloader.get() {
            Some(reload) => logged(why, reload),
            None => {
                log::warn!("{why}: the broker is not serving yet; nothing reloaded");
                Err("the broker is not serving yet".into())
            }
        }
    }
}

/// The reload of a broker started with `args` and now running with `first`.
fn reloader(args: Arc<[String]>, first: &Settings, control: Control) -> Reloader {
    let certificates: Vec<_> = first
        .config
        .listeners
        .iter()
        .filter_map(|l| l.tls.clone().map(|tls| (format!("the listener on {}", l.addr), tls)))
        .chain(first.http.iter().filter_map(|h| {
            h.options.tls.clone().map(|tls| (format!("the HTTP admin API on {}", h.bind), tls))
        }))
        .collect();
    let fixed = Fixed::of(first);
    let users = Mutex::new(first.users.clone());
    // One reload at a time: SIGHUP and the API may ask together.
    let busy = Mutex::new(());
    Arc::new(move || {
        let _one = busy.lock().unwrap_or_else(PoisonError::into_inner);
        reload_once(&args, &fixed, &certificates, &users, &control)
    })
}

/// Runs `reload`, logging what it did under `why` (SIGHUP, or the API's path).
fn logged(why: &str, reload: &Reloader) -> Result<Reloaded, String> {
    let outcome = reload();
    match &outcome {
        Ok(r) => {
            if !r.restart_needed.is_empty() {
                log::warn!(
                    "{why}: changed, but applied only on a restart: {}",
                    r.restart_needed.join(", ")
                );
            }
            log::info!(
                "{why}: configuration reloaded; {} clients of removed users disconnected",
                r.disconnected
            );
        }
        Err(e) => log::error!("{why}: {e}; nothing changed"),
    }
    outcome
}

fn reload_once(
    args: &[String],
    fixed: &Fixed,
    certificates: &[(String, ternmq::tokio::TlsAcceptor)],
    users: &Mutex<Option<Vec<String>>>,
    control: &Control,
) -> Result<Reloaded, String> {
    // Each certificate on its own: a file that cannot be used leaves that listener's old
    // certificate serving (and the configuration below then fails to load, naming it).
    let mut notes = Vec::new();
    for (at, tls) in certificates {
        match tls.reload() {
            Ok(()) => {
                log::info!("reloaded the certificate of {at}");
                notes.push(format!("reloaded the certificate of {at}"));
            }
            Err(e) => {
                log::warn!("keeping the old certificate of {at}: {e}");
                notes.push(format!("keeping the old certificate of {at}: {e}"));
            }
        }
    }
    let new = settings(args)?.ok_or("the command line asks for help, not a broker")?;
    let mut restart_needed = fixed.changed(&Fixed::of(&new));
    log::set_max_level(new.log_level);
    let mut users = users.lock().unwrap_or_else(PoisonError::into_inner);
    let removed: Vec<String> = match (&*users, &new.users) {
        (Some(old), Some(now)) => {
            let now: BTreeSet<&String> = now.iter().collect();
            old.iter().filter(|u| !now.contains(u)).cloned().collect()
        }
        _ => Vec::new(),
    };
    let request =
        Request::Reload { config: Box::new(new.config.broker.clone()), disconnect_users: removed };
    match control.request_blocking(request).map_err(|e| e.to_string())? {
        Response::Reloaded { restart_needed: more, disconnected } => {
            restart_needed.extend(more.into_iter().map(String::from));
            users.clone_from(&new.users);
            Ok(Reloaded { restart_needed, disconnected, notes })
        }
        Response::Refused(e) => Err(e.to_string()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}
