//! `[service]`: the settings of `mos-runtime serve`, the scheduler as an HTTP service.
//!
//! The section lives in its own file so that the training config stays untouched apart from one
//! field. A served config needs no `[[datasets]]` (clients register them over HTTP), so
//! [`load_service_config`] layers the sources exactly as [`Config::load`] does but checks only the
//! keys the service uses ([`Config::validate_service`]).
//!
//! The bearer token is a secret: it is never serialised (so `config.resolved.toml` of a training
//! run cannot leak it) and its `Debug` output is redacted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// The environment variable read for the token when neither `service.token` nor
/// `service.token_file` is set. (`MOS_SERVICE__TOKEN` also works: it is the ordinary environment
/// override of `service.token`.)
pub const TOKEN_ENV: &str = "MOS_SERVICE_TOKEN";

/// A bearer token. `Debug` prints `"<redacted>"` and serialisation skips it, so a token reaches
/// neither logs nor files written from a config.
#[derive(Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself; call only to compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// `[service]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Listen address. Loopback by default: exposing the service is an explicit choice, and a
    /// non-loopback address is refused unless a token is configured.
    pub listen: String,
    /// The bearer token required by every write. Prefer `token_file` or the environment: a token
    /// in a config file tends to end up in version control. Never serialised.
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    /// A file whose content (trimmed) is the token; relative to the config file.
    pub token_file: Option<PathBuf>,
    /// Largest accepted request body in bytes; a larger one is refused with 413 before it is
    /// read whole. The default fits COSSIM embeddings of 256 datasets x 2048 dimensions.
    pub max_body_bytes: usize,
    /// Largest number of datasets a registration may declare.
    pub max_datasets: usize,
    /// Optional `mixture.jsonl` written exactly as a training run writes it (a start record at
    /// registration, one line per accepted update), so `mos-runtime replay --log` checks a
    /// service's trajectory too. Relative paths are relative to the working directory.
    pub mixture_log: Option<PathBuf>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8750".to_string(),
            token: None,
            token_file: None,
            max_body_bytes: 8 << 20,
            max_datasets: 4096,
            mixture_log: None,
        }
    }
}

impl ServiceConfig {
    /// Resolves the token: `token`, else the content of `token_file`, else the `MOS_SERVICE_TOKEN`
    /// variable of `env`. An empty token counts as none.
    pub fn resolve_token(&self, env: &[(String, String)]) -> Result<Option<Secret>, ConfigError> {
        let token = if let Some(t) = &self.token {
            Some(t.expose().trim().to_string())
        } else if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                file: "<config>".to_string(),
                key: "service.token_file".to_string(),
                message: format!("cannot read the token file {}: {e}", path.display()),
            })?;
            Some(text.trim().to_string())
        } else {
            env.iter()
                .find(|(k, _)| k == TOKEN_ENV)
                .map(|(_, v)| v.trim().to_string())
        };
        Ok(token.filter(|t| !t.is_empty()).map(Secret))
    }
}

impl Config {
    /// Checks the keys `serve` uses: `[service]` and the MoS keys of `[scheduler]`.
    /// `[[datasets]]` may be empty (clients register datasets over HTTP) and `scheduler.strategy`
    /// is ignored (the service always runs MoS).
    pub fn validate_service(&self) -> Result<(), ConfigError> {
        let s = &self.service;
        if s.listen.parse::<SocketAddr>().is_err() {
            return Err(self.invalid(
                "service.listen",
                format!(
                    "`{}` is not an address of the form 127.0.0.1:8750",
                    s.listen
                ),
            ));
        }
        if s.max_body_bytes < 1024 {
            return Err(self.invalid("service.max_body_bytes", "must be at least 1024"));
        }
        if s.max_datasets == 0 {
            return Err(self.invalid("service.max_datasets", "must be at least 1"));
        }
        // The MoS keys are checked as `Config::validate` checks them; the strategy and dataset rules
        // are skipped on purpose (see above).
        self.validate_scheduler_only()
    }

    fn validate_scheduler_only(&self) -> Result<(), ConfigError> {
        let s = &self.scheduler;
        for (key, tau) in [
            ("scheduler.temperature", s.temperature.0),
            ("scheduler.init_temperature", s.init_temperature.0),
        ] {
            if tau.is_nan() || tau <= 0.0 {
                return Err(self.invalid(key, "must be a positive number or \"inf\""));
            }
        }
        if !(s.scorer_lr > 0.0 && s.scorer_lr.is_finite()) {
            return Err(self.invalid("scheduler.scorer_lr", "must be positive"));
        }
        if !(s.ema_beta > 0.0 && s.ema_beta <= 1.0) {
            return Err(self.invalid("scheduler.ema_beta", "must be in (0, 1]"));
        }
        if !(s.target_boost > 0.0 && s.target_boost.is_finite()) {
            return Err(self.invalid("scheduler.target_boost", "must be positive"));
        }
        Ok(())
    }
}

/// Loads a config for `serve`: the file, then `MOS_` variables of `env`, then `overrides`, as
/// [`Config::load`] does, validated with [`Config::validate_service`]. `service.token_file` is
/// resolved against the config file's directory.
pub fn load_service_config(
    path: &Path,
    overrides: &[String],
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut cfg = Config::load_layers(path, overrides, env)?;
    let base = path.parent().unwrap_or(Path::new("."));
    if let Some(t) = cfg.service.token_file.as_mut() {
        if t.is_relative() {
            *t = base.join(&*t);
        }
    }
    cfg.validate_service()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_neither_serialised_nor_printed() {
        let mut cfg = Config::default();
        cfg.service.token = Some(Secret::new("hunter2-secret"));
        let toml = toml::to_string_pretty(&cfg).unwrap();
        assert!(!toml.contains("hunter2"), "{toml}");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn token_sources_in_order() {
        let env = vec![(TOKEN_ENV.to_string(), " from-env \n".to_string())];
        let mut s = ServiceConfig::default();
        assert_eq!(s.resolve_token(&env).unwrap().unwrap().expose(), "from-env");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "from-file\n").unwrap();
        s.token_file = Some(f);
        assert_eq!(
            s.resolve_token(&env).unwrap().unwrap().expose(),
            "from-file"
        );
        s.token = Some(Secret::new("inline"));
        assert_eq!(s.resolve_token(&env).unwrap().unwrap().expose(), "inline");
        s.token = Some(Secret::new("  "));
        assert!(s.resolve_token(&env).unwrap().is_none());
    }

    #[test]
    fn a_served_config_needs_no_datasets_but_checks_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(
            &p,
            "[scheduler]\nreward = \"diff\"\n[service]\nlisten = \"nope\"\n",
        )
        .unwrap();
        let e = load_service_config(&p, &[], &[]).unwrap_err().to_string();
        assert!(e.contains("service.listen"), "{e}");
        std::fs::write(&p, "[scheduler]\nema_beta = 0\n").unwrap();
        let e = load_service_config(&p, &[], &[]).unwrap_err().to_string();
        assert!(
            e.contains("scheduler.ema_beta") && e.contains("s.toml"),
            "{e}"
        );
        std::fs::write(&p, "[service]\ntoken_file = \"tok\"\n").unwrap();
        let cfg = load_service_config(&p, &[], &[]).unwrap();
        assert_eq!(cfg.service.token_file, Some(dir.path().join("tok")));
        assert!(cfg.datasets.is_empty());
    }
}
