//! `relay-sim simulate`: a small city that gives running nodes something real
//! to relay. A backend places orders and drives each through its lifecycle
//! with `POST /api/events`; stores' merchants accept or decline them;
//! drivers roam the streets, send their positions, take delivery offers and
//! ride to the store and the door; store tablets drop out and come back,
//! and the backend watches stores go offline and online (presence);
//! customers and their drivers chat (the backend reads `{prefix}chat`);
//! customers, an admin console and a support agent listen. Everyone talks to the nodes only through the
//! public interface (Socket.IO and HTTP), so it works against one embedded
//! node as well as a cluster behind a load balancer.
//!
//! Files, one job each: `args` (flags), `city` (map, stores, menus),
//! `geo` (positions, movement), `clock` (accelerated time), `rng` (seeded
//! randomness), `api` (the HTTP API), `chat` (order chat, and the backend's
//! check of `{prefix}chat`), `tail` (following a Redis stream), `desk` and
//! `outcomes` (the backend's
//! order book and how it learns offer outcomes), `presence` (which stores
//! are online, as the backend sees it), `order` (one order's
//! lifecycle), `backend` (placing orders, happenings in town), `drivers`,
//! `merchants`, `customers`, `watchers` (admin, support), `glitches`
//! (deliberate bad input), `session` (keeping a connection up), `stats`.

mod api;
mod args;
mod backend;
mod chat;
mod city;
mod clock;
mod customers;
mod desk;
mod drivers;
#[cfg(test)]
mod end_to_end;
mod geo;
mod glitches;
mod merchants;
mod order;
mod outcomes;
mod presence;
mod rng;
mod session;
mod stats;
mod tail;
mod watchers;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use args::{ArgsError, SimulateArgs};
pub use stats::Summary;

use api::{ApiError, RelayApi};
use city::City;
use clock::{Clock, real_sleep};
use relay::{
    auth::{Role, mint_hs256},
    config::Secret,
};
use relay_client::{Client, ClientError, ConnectOptions, Transport};
use rng::Rng;
use stats::Stats;

/// How long the nodes may take to answer at start (they may be starting
/// too, as in `make run`).
const STARTUP_WAIT: Duration = Duration::from_secs(30);
/// Bounds on the way out: clients saying goodbye, open orders cancelled.
const TASKS_GRACE: Duration = Duration::from_secs(5);
const CANCEL_GRACE: Duration = Duration::from_secs(3);
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error("{0}")]
    Setup(String),
    #[error("stopped before the nodes answered")]
    Stopped,
}

/// What every part of the city shares.
pub(crate) struct Ctx {
    pub urls: Vec<String>,
    pub city: City,
    pub clock: Clock,
    pub seed: u64,
    /// Part of every order id, so that runs against one cluster never meet.
    pub run_tag: String,
    pub api: RelayApi,
    /// For long-polling clients and resyncs: one connection pool.
    pub http: reqwest::Client,
    pub stats: Stats,
    pub desk: desk::Desk,
    pub chat_log: chat::ChatLog,
    pub stop: CancellationToken,
    pub tasks: TaskTracker,
    rush: Vec<AtomicBool>,
    gps_glitch: AtomicUsize,
    refusal_seen: AtomicBool,
    location_interval: Duration,
    location_floor: Duration,
    /// Per store, wall-clock time between its tablet's absences (0: never).
    pub store_breaks_every: Duration,
    /// The nodes' presence grace: a tablet's absence is measured in it.
    pub presence_grace: Duration,
    secret: Secret,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Ctx {
    fn new(args: &SimulateArgs, stop: CancellationToken) -> Self {
        let urls: Vec<String> = args
            .urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        let min_interval = Duration::from_millis(args.location_min_interval_ms);
        Self {
            city: City::build(args.seed, args.stores, args.customers, args.drivers),
            clock: Clock::new(args.speed),
            seed: args.seed,
            run_tag: run_tag(),
            api: RelayApi::new(urls.clone(), args.api_key.clone()),
            http: reqwest::Client::new(),
            stats: Stats::default(),
            desk: desk::Desk::default(),
            chat_log: chat::ChatLog::default(),
            stop,
            tasks: TaskTracker::new(),
            rush: (0..args.stores).map(|_| AtomicBool::new(false)).collect(),
            gps_glitch: AtomicUsize::new(usize::MAX),
            refusal_seen: AtomicBool::new(false),
            location_interval: args.location_interval,
            store_breaks_every: args.store_breaks_every,
            presence_grace: Duration::from_millis(args.presence_grace_ms),
            // The relay drops a driver's updates closer together than its
            // minimum interval, measured on arrival: keep a margin for a
            // stalled node or network (a fifth of it was not always enough
            // on a loaded 2-core machine), and never flood at any speed.
            location_floor: (min_interval * 3 / 2).max(Duration::from_millis(250)),
            secret: args.jwt_secret.clone(),
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
            urls,
        }
    }

    pub fn token(&self, sub: &str, role: Role, store_ids: &[String]) -> String {
        mint_hs256(
            &self.secret,
            sub,
            role,
            store_ids,
            TOKEN_TTL,
            self.issuer.as_deref(),
            self.audience.as_deref(),
        )
        .unwrap_or_default()
    }

    /// The counters, with the backend's check of `{prefix}chat`.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let mut summary = self.stats.summary(elapsed, self.city.drivers.len());
        let log = self.chat_log.check(tokio::time::Instant::now());
        summary.chat_log_repeats = log.repeats;
        summary.chat_log_missing = log.missing;
        summary
    }

    pub fn in_rush(&self, store: usize) -> bool {
        self.rush
            .get(store)
            .is_some_and(|r| r.load(Ordering::Relaxed))
    }

    /// Returns the new state.
    pub fn set_rush(&self, store: usize, rush: bool) -> bool {
        if let Some(r) = self.rush.get(store) {
            r.store(rush, Ordering::Relaxed);
        }
        rush
    }

    /// Wall-clock time until a driver's next location update: the city's
    /// interval with some jitter, never below the relay's limit.
    pub fn location_interval(&self, rng: &mut Rng) -> Duration {
        let every = rng.jitter(self.clock.real(self.location_interval), 0.1);
        let floor = self.location_floor;
        every.max(floor + floor.mul_f64(rng.range(0.0, 0.1)))
    }

    /// True the first time a driver's update is refused unexpectedly.
    pub fn first_refusal(&self) -> bool {
        !self.refusal_seen.swap(true, Ordering::Relaxed)
    }

    pub fn request_gps_glitch(&self, driver: usize) {
        self.gps_glitch.store(driver, Ordering::Relaxed);
    }

    /// True once for the driver asked to send a garbage fix.
    pub fn take_gps_glitch(&self, driver: usize) -> bool {
        self.gps_glitch
            .compare_exchange(driver, usize::MAX, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

fn run_tag() -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = relay::events::now_ms() / 100 % 36u64.pow(5);
    let mut tag = [b'0'; 5];
    for slot in tag.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&tag).into_owned()
}

/// A running simulation.
pub struct Simulation {
    ctx: Arc<Ctx>,
    started: tokio::time::Instant,
}

impl Simulation {
    /// Checks the flags and the nodes (they answer, they take the API key
    /// and the tokens), then starts the city. It runs until `stop` is
    /// cancelled or `--duration` has passed.
    pub async fn start(args: SimulateArgs, stop: CancellationToken) -> Result<Self, SimulateError> {
        args.validate()?;
        let ctx = Arc::new(Ctx::new(&args, stop.child_token()));
        tokio::select! {
            checked = preflight(&ctx) => checked?,
            () = ctx.stop.cancelled() => return Err(SimulateError::Stopped),
        }
        let started = tokio::time::Instant::now();
        if !args.status_every.is_zero() {
            println!(
                "relay-sim simulate: {} stores, {} drivers, {} customers around Bengaluru; {} orders/min, city time x{}, seed {}; nodes {}",
                args.stores,
                args.drivers,
                args.customers,
                args.orders_per_minute,
                args.speed,
                args.seed,
                ctx.urls.join(", ")
            );
        }
        spawn_city(&ctx, &args);
        if let Some(duration) = args.duration {
            let stop = ctx.stop.clone();
            ctx.tasks.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(duration) => stop.cancel(),
                    () = stop.cancelled() => {}
                }
            });
        }
        if !args.status_every.is_zero() {
            let (ctx2, every) = (ctx.clone(), args.status_every);
            ctx.tasks.spawn(async move {
                while real_sleep(every, &ctx2.stop).await.is_ok() {
                    println!("{}", ctx2.summary(started.elapsed()));
                }
            });
        }
        Ok(Self { ctx, started })
    }

    /// The counters so far.
    pub fn summary(&self) -> Summary {
        self.ctx.summary(self.started.elapsed())
    }

    pub fn stop(&self) {
        self.ctx.stop.cancel();
    }

    /// Waits for the end of the run, then winds down: clients disconnect,
    /// open orders are cancelled. Returns the final counters.
    pub async fn finish(self) -> Summary {
        self.ctx.stop.cancelled().await;
        self.ctx.tasks.close();
        if tokio::time::timeout(TASKS_GRACE, self.ctx.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some simulated clients did not finish in time");
        }
        let cancelled = backend::cancel_open_orders(&self.ctx, CANCEL_GRACE).await;
        self.ctx
            .stats
            .cancelled_at_stop
            .fetch_add(cancelled as u64, Ordering::Relaxed);
        self.summary()
    }
}

/// A simulation dropped without [`Simulation::finish`] (a failed test)
/// still stops its clients.
impl Drop for Simulation {
    fn drop(&mut self) {
        self.ctx.stop.cancel();
    }
}

/// Runs a simulation until `stop` is cancelled or `--duration` has passed.
pub async fn run(args: SimulateArgs, stop: CancellationToken) -> Result<Summary, SimulateError> {
    let simulation = Simulation::start(args, stop).await?;
    Ok(simulation.finish().await)
}

fn spawn_city(ctx: &Arc<Ctx>, args: &SimulateArgs) {
    let tasks = &ctx.tasks;
    tasks.spawn(watchers::admin(ctx.clone()));
    tasks.spawn(watchers::support(ctx.clone()));
    for i in 0..ctx.city.stores.len() {
        tasks.spawn(merchants::run(ctx.clone(), i));
    }
    for i in 0..ctx.city.customers.len() {
        tasks.spawn(customers::run(ctx.clone(), i));
    }
    for i in 0..ctx.city.drivers.len() {
        tasks.spawn(drivers::run(ctx.clone(), i));
    }
    let ctx2 = ctx.clone();
    tasks.spawn(async move { outcomes::read(&ctx2).await });
    tasks.spawn(backend::happenings(ctx.clone()));
    // The backend's feeds in Redis (none from an embedded node).
    let redis = args
        .redis_url
        .as_ref()
        .map(|u| (u.expose().to_owned(), args.key_prefix.clone()));
    let (ctx2, redis2) = (ctx.clone(), redis.clone());
    tasks.spawn(async move { presence::watch(&ctx2, redis2).await });
    let ctx2 = ctx.clone();
    tasks.spawn(async move { chat::read_log(&ctx2, redis).await });
    tasks.spawn(glitches::run(ctx.clone(), args.glitch_every));
    // Orders start once the city is online: drivers must have reported a
    // position before the first delivery request looks for them.
    let (ctx2, rate) = (ctx.clone(), args.orders_per_minute);
    let everyone =
        (2 + ctx.city.stores.len() + ctx.city.customers.len() + ctx.city.drivers.len()) as u64;
    tasks.spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ctx2.stats.connects.load(Ordering::Relaxed) < everyone
            && tokio::time::Instant::now() < deadline
        {
            if real_sleep(Duration::from_millis(50), &ctx2.stop)
                .await
                .is_err()
            {
                return;
            }
        }
        // One location round for the drivers.
        if real_sleep(Duration::from_millis(300), &ctx2.stop)
            .await
            .is_ok()
        {
            backend::place_orders(ctx2, rate).await;
        }
    });
}

/// Fails with one clear line when the nodes will not work with these
/// flags; waits for nodes that are still starting.
async fn preflight(ctx: &Ctx) -> Result<(), SimulateError> {
    let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
    let retry = |what: String| {
        let urls = ctx.urls.join(", ");
        async move {
            if tokio::time::Instant::now() > deadline {
                return Err(SimulateError::Setup(format!(
                    "no node at {urls} answered within {}s: {what}",
                    STARTUP_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        }
    };
    loop {
        match ctx.api.outcomes(1).await {
            Ok(_) => break,
            Err(ApiError::Refused { status: 401, .. }) => {
                return Err(SimulateError::Setup(
                    "the nodes refused --api-key (RELAY_API_KEY): 401".into(),
                ));
            }
            Err(ApiError::Refused { status: 404, .. }) => {
                return Err(SimulateError::Setup(
                    "the nodes' publish API is off: start them with RELAY_API_KEY".into(),
                ));
            }
            Err(ApiError::Refused { status, message }) => {
                return Err(SimulateError::Setup(format!(
                    "GET /api/outcomes answered {status}: {message}"
                )));
            }
            Err(ApiError::Unavailable(e)) => retry(e).await?,
        }
    }
    loop {
        let options = ConnectOptions::new(ctx.urls[0].clone())
            .transport(Transport::WebSocket)
            .auth(json!({ "token": ctx.token("a1", Role::Admin, &[]) }))
            .timeout(Duration::from_secs(5));
        match Client::connect(options).await {
            Ok(client) => {
                client.disconnect().await;
                return Ok(());
            }
            Err(ClientError::Rejected { message, .. }) if message != "too many connections" => {
                return Err(SimulateError::Setup(format!(
                    "the nodes refused a token signed with --jwt-secret (RELAY_JWT_SECRET): {message}"
                )));
            }
            Err(e) => retry(e.to_string()).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(speed: f64, min_interval_ms: u64) -> Ctx {
        let mut args = SimulateArgs::new(
            vec!["http://127.0.0.1:1/".into()],
            Secret::new("k"),
            Secret::new("s"),
        );
        args.speed = speed;
        args.location_min_interval_ms = min_interval_ms;
        Ctx::new(&args, CancellationToken::new())
    }

    #[test]
    fn drivers_never_send_faster_than_the_relay_allows() {
        let mut rng = Rng::new(1);
        // At city speed 1: every 5 s, give or take.
        let calm = ctx(1.0, 1000);
        for _ in 0..1000 {
            let every = calm.location_interval(&mut rng);
            assert!(
                every >= Duration::from_millis(4500) && every <= Duration::from_millis(5500),
                "{every:?}"
            );
        }
        // Accelerated: the relay's limit and a margin win.
        let fast = ctx(50.0, 1000);
        for _ in 0..1000 {
            assert!(fast.location_interval(&mut rng) >= Duration::from_millis(1500));
        }
        assert_eq!(fast.urls, ["http://127.0.0.1:1"]);
    }

    #[test]
    fn one_driver_takes_a_gps_glitch_once() {
        let ctx = ctx(1.0, 1000);
        assert!(!ctx.take_gps_glitch(3));
        ctx.request_gps_glitch(3);
        assert!(!ctx.take_gps_glitch(2));
        assert!(ctx.take_gps_glitch(3));
        assert!(!ctx.take_gps_glitch(3));
    }

    #[test]
    fn run_tags_are_short_and_plain() {
        let tag = run_tag();
        assert_eq!(tag.len(), 5);
        assert!(tag.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
