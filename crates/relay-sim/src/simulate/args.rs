//! `relay-sim simulate` flags. Times of the city (think times, the location
//! interval) are city time; rates and `--duration` are wall-clock.

use std::time::Duration;

use clap::Args;

use relay::config::{Secret, parse_duration};

pub const DEFAULT_URL: &str = "http://127.0.0.1:3000";

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Base URLs of the nodes or of their load balancer; clients are spread
    /// over them round-robin, and move on to the next one when theirs fails.
    #[arg(long = "url", value_delimiter = ',', default_value = DEFAULT_URL)]
    pub urls: Vec<String>,
    /// The nodes' publish API key: the simulated backend posts its events
    /// to `POST /api/events` and reads offer outcomes from `GET /api/outcomes`.
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    pub api_key: Secret,
    /// The nodes' HS256 secret, to mint every simulated user's token.
    #[arg(long, env = "RELAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Secret,
    /// `iss` of the tokens, for nodes that check it.
    #[arg(long, env = "RELAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// `aud` of the tokens, for nodes that check it.
    #[arg(long, env = "RELAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Delivery drivers on the road (`d1`, `d2`, ...).
    #[arg(long, default_value_t = 30)]
    pub drivers: usize,
    /// Stores (`s1`, ... each with its merchant `m1`, ...).
    #[arg(long, default_value_t = 6)]
    pub stores: usize,
    /// Customers (`c1`, ...), all connected; a quarter of them on long-polling.
    #[arg(long, default_value_t = 60)]
    pub customers: usize,
    /// New orders per wall-clock minute, at random (Poisson) times. 0: none.
    #[arg(long, default_value_t = 20.0)]
    pub orders_per_minute: f64,
    /// How much faster than the wall clock the city runs: at 20 a
    /// 30-minute order (kitchen, ride, handover) takes 90 s. The relay
    /// timers in the events are scaled too (at least 3 s).
    #[arg(long, default_value_t = 20.0)]
    pub speed: f64,
    /// Seed of every random choice: the same seed gives the same city, the
    /// same orders and the same choices by each person in it.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this long (90s, 15m, 2h); runs until Ctrl-C by default.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// City time between two location updates of a driver.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub location_interval: Duration,
    /// The nodes' `RELAY_LOCATION_MIN_INTERVAL_MS`: a driver never sends
    /// faster than this (plus a margin for network jitter), whatever the speed.
    #[arg(long, env = "RELAY_LOCATION_MIN_INTERVAL_MS", default_value_t = 1000)]
    pub location_min_interval_ms: u64,
    /// Wall-clock time between two deliberate bad inputs (a garbage GPS fix,
    /// a buggy app, a stale token, a malformed backend event), so that the
    /// rejection metrics see some. 0 turns them off.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub glitch_every: Duration,
    /// Wall-clock time between two status lines on stdout. 0 turns them off.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub status_every: Duration,
    /// Wall-clock time, per store, between two absences of its tablet:
    /// either a Wi-Fi blip (back within a tenth to a third of the presence
    /// grace: no change) or a break (1.5 to 3 graces: the store goes
    /// offline and comes back). 0 keeps every tablet connected.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub store_breaks_every: Duration,
    /// The nodes' `RELAY_PRESENCE_GRACE_MS`, which the absences are
    /// measured against.
    #[arg(long, env = "RELAY_PRESENCE_GRACE_MS", default_value_t = 10_000)]
    pub presence_grace_ms: u64,
    /// The nodes' Redis: the simulated backend then reads presence from
    /// `{prefix}presence` as a production backend does. Without it
    /// (embedded nodes) it polls `GET /api/presence`.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,
    /// The nodes' `RELAY_KEY_PREFIX`, for `{prefix}presence`.
    #[arg(long, env = "RELAY_KEY_PREFIX", default_value = "relay:")]
    pub key_prefix: String,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {flag}: {reason}")]
pub struct ArgsError {
    flag: &'static str,
    reason: String,
}

fn bad(flag: &'static str, reason: impl Into<String>) -> ArgsError {
    ArgsError {
        flag,
        reason: reason.into(),
    }
}

impl SimulateArgs {
    /// The defaults, for callers that are not the command line (tests).
    pub fn new(urls: Vec<String>, api_key: Secret, jwt_secret: Secret) -> Self {
        Self {
            urls,
            api_key,
            jwt_secret,
            jwt_issuer: None,
            jwt_audience: None,
            drivers: 30,
            stores: 6,
            customers: 60,
            orders_per_minute: 20.0,
            speed: 20.0,
            seed: 1,
            duration: None,
            location_interval: Duration::from_secs(5),
            location_min_interval_ms: 1000,
            glitch_every: Duration::from_secs(60),
            status_every: Duration::from_secs(5),
            store_breaks_every: Duration::from_secs(90),
            presence_grace_ms: 10_000,
            redis_url: None,
            key_prefix: "relay:".to_owned(),
        }
    }

    pub fn validate(&self) -> Result<(), ArgsError> {
        if self.urls.is_empty() {
            return Err(bad("--url", "give at least one node URL"));
        }
        for url in &self.urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad("--url", format!("'{url}' is not an http(s):// URL")));
            }
        }
        if self.api_key.expose().is_empty() {
            return Err(bad("--api-key (RELAY_API_KEY)", "must not be empty"));
        }
        if self.jwt_secret.expose().is_empty() {
            return Err(bad("--jwt-secret (RELAY_JWT_SECRET)", "must not be empty"));
        }
        for (flag, n, max) in [
            ("--drivers", self.drivers, 10_000),
            ("--stores", self.stores, 1_000),
            ("--customers", self.customers, 10_000),
        ] {
            if n == 0 || n > max {
                return Err(bad(flag, format!("must be between 1 and {max}")));
            }
        }
        if !(self.orders_per_minute.is_finite() && (0.0..=6000.0).contains(&self.orders_per_minute))
        {
            return Err(bad("--orders-per-minute", "must be between 0 and 6000"));
        }
        if !(self.speed.is_finite() && self.speed > 0.0 && self.speed <= 1000.0) {
            return Err(bad("--speed", "must be above 0 and at most 1000"));
        }
        if self.location_interval.is_zero() {
            return Err(bad("--location-interval", "must be at least 1s"));
        }
        if let Some(url) = &self.redis_url
            && !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://"))
        {
            return Err(bad(
                "--redis-url (REDIS_URL)",
                "must be a redis:// or rediss:// URL",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SimulateArgs {
        SimulateArgs::new(
            vec![DEFAULT_URL.to_owned()],
            Secret::new("k"),
            Secret::new("s"),
        )
    }

    #[test]
    fn the_command_line_defaults_are_the_library_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: SimulateArgs,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from([
            "simulate",
            "--api-key",
            "k",
            "--jwt-secret",
            "s",
            "--location-min-interval-ms",
            "1000",
        ])
        .expect("parse")
        .args;
        let lib = args();
        assert_eq!(parsed.urls, lib.urls);
        assert_eq!(
            (parsed.drivers, parsed.stores, parsed.customers, parsed.seed),
            (lib.drivers, lib.stores, lib.customers, lib.seed)
        );
        assert_eq!(
            (parsed.orders_per_minute, parsed.speed),
            (lib.orders_per_minute, lib.speed)
        );
        assert_eq!(
            (
                parsed.location_interval,
                parsed.glitch_every,
                parsed.status_every,
                parsed.duration,
                parsed.store_breaks_every,
                &parsed.key_prefix
            ),
            (
                lib.location_interval,
                lib.glitch_every,
                lib.status_every,
                lib.duration,
                lib.store_breaks_every,
                &lib.key_prefix
            )
        );
    }

    #[test]
    fn the_defaults_are_valid_and_bad_values_name_their_flag() {
        assert!(args().validate().is_ok());
        let mut a = args();
        a.speed = 0.0;
        assert!(a.validate().unwrap_err().to_string().contains("--speed"));
        let mut a = args();
        a.urls = vec!["127.0.0.1:3000".into()];
        assert!(a.validate().unwrap_err().to_string().contains("--url"));
        let mut a = args();
        a.drivers = 0;
        assert!(a.validate().unwrap_err().to_string().contains("--drivers"));
        let mut a = args();
        a.orders_per_minute = f64::NAN;
        assert!(a.validate().is_err());
    }
}
