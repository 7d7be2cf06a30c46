//! The reconnect storm: a node holding hundreds of customers is SIGKILLed
//! while order events stream in, and all of them come back at once to the
//! survivor with their `last_event_id`, the way socket.io-client does
//! (randomised back-off, a shedding node's `Retry-After` honoured). The
//! survivor's connection rate is set low, so that it sheds part of the
//! storm. `make bench` runs the same storm with 10,000 clients and reports
//! the times (docs/benchmarks.md); this test asserts what must hold.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use relay::auth::Role;
use relay_client::{Backoff, Client, ClientError, ConnectOptions, Transport};
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use crate::support::{Cluster, WAIT, metric, token};

/// Customers on the node that is killed, and on the one that survives.
const VICTIMS: usize = 240;
const OWN: usize = 30;
/// New sessions a second the survivor takes: well below the storm's
/// first wave (socket.io-client's first reconnect comes after 0.5 to 1.5 s).
const SURVIVOR_RATE: &str = "60";
/// Status updates appended per tick, round-robin over the orders.
const EVENTS_PER_TICK: usize = 8;
const TICK: Duration = Duration::from_millis(40);
/// Bound on the whole storm, and on each later phase.
const STORM_WAIT: Duration = Duration::from_secs(60);

/// What a client task tells the test.
#[derive(Debug)]
enum Report {
    Connected { client: usize },
    Event { client: usize, event_id: String },
    SyncDone { client: usize, recovered: bool },
    Shed { retry_after: Option<Duration> },
}

/// Connects with socket.io-client's back-off, honouring `Retry-After`.
async fn connect_like_socket_io(
    url: &str,
    client: usize,
    auth: serde_json::Value,
    backoff: &mut Backoff,
    reports: &mpsc::UnboundedSender<Report>,
) -> Client {
    let deadline = tokio::time::Instant::now() + STORM_WAIT;
    loop {
        let attempt = Client::connect(
            ConnectOptions::new(url)
                .transport(Transport::WebSocket)
                .auth(auth.clone())
                .timeout(WAIT),
        )
        .await;
        match attempt {
            Ok(c) => {
                backoff.reset();
                let _ = reports.send(Report::Connected { client });
                return c;
            }
            Err(e) => {
                if let ClientError::Refused { retry_after, .. } = &e {
                    let _ = reports.send(Report::Shed {
                        retry_after: *retry_after,
                    });
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "client {client} could not connect within {STORM_WAIT:?}: {e}"
                );
                tokio::time::sleep(backoff.delay_after(&e)).await;
            }
        }
    }
}

/// One customer: reads its events; when the connection is lost, comes back
/// to `fallback` with the last `event_id` it saw, as an app does. Runs
/// until aborted.
fn customer(
    client: usize,
    first: String,
    fallback: String,
    reports: mpsc::UnboundedSender<Report>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let sub = format!("c{client}");
        let mut backoff = Backoff::socket_io(client as u64);
        let auth = json!({ "token": token(&sub, Role::Customer) });
        let mut conn = connect_like_socket_io(&first, client, auth, &mut backoff, &reports).await;
        let mut last: Option<String> = None;
        loop {
            match conn.next_event(STORM_WAIT).await {
                Ok(event) if event.name == "order:status_update" => {
                    let id = event.data()["event_id"].as_str().expect("event_id");
                    last = Some(id.to_owned());
                    let _ = reports.send(Report::Event {
                        client,
                        event_id: id.to_owned(),
                    });
                }
                Ok(event) if event.name == "sync:done" => {
                    let _ = reports.send(Report::SyncDone {
                        client,
                        recovered: event.data()["recovered"] == true,
                    });
                }
                Ok(_) => {}
                Err(ClientError::Closed) => {
                    let mut auth = json!({ "token": token(&sub, Role::Customer) });
                    if let Some(id) = &last {
                        auth["last_event_id"] = json!(id);
                    }
                    // socket.io-client waits one back-off before the first try too.
                    tokio::time::sleep(backoff.next_delay()).await;
                    conn = connect_like_socket_io(&fallback, client, auth, &mut backoff, &reports)
                        .await;
                }
                Err(e) => panic!("client {client}: {e}"),
            }
        }
    })
}

/// Appends `EVENTS_PER_TICK` status updates per tick, round-robin over
/// `orders`, until `stop`; returns the entry ids per order.
fn produce(
    cluster: &Cluster,
    orders: usize,
    stop: Arc<Notify>,
) -> tokio::task::JoinHandle<Vec<Vec<String>>> {
    let (redis_url, key) = (cluster.redis.url(), cluster.key("events"));
    tokio::spawn(async move {
        let client = redis::Client::open(redis_url).expect("redis");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let mut ids = vec![Vec::new(); orders];
        let mut ticks = tokio::time::interval(TICK);
        let mut next = 0usize;
        loop {
            tokio::select! {
                () = stop.notified() => return ids,
                _ = ticks.tick() => {}
            }
            let mut pipe = redis::pipe();
            let batch: Vec<usize> = (0..EVENTS_PER_TICK).map(|k| (next + k) % orders).collect();
            next += EVENTS_PER_TICK;
            for &i in &batch {
                let data = json!({"order_id": format!("o{i}"), "status": format!("s{next}")});
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("type")
                    .arg("order.status")
                    .arg("data")
                    .arg(data.to_string());
            }
            let appended: Vec<String> = pipe.query_async(&mut conn).await.expect("XADD");
            for (i, id) in batch.into_iter().zip(appended) {
                ids[i].push(id);
            }
        }
    })
}

/// Receives reports until `done` holds, within `STORM_WAIT`.
async fn collect_until(
    reports: &mut mpsc::UnboundedReceiver<Report>,
    state: &mut Observed,
    what: &str,
    done: impl Fn(&Observed) -> bool,
) {
    let deadline = tokio::time::Instant::now() + STORM_WAIT;
    while !done(state) {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(report)) => state.take(report),
            Ok(None) => panic!("every client task ended before {what}"),
            Err(_) => panic!("not within {STORM_WAIT:?}: {what}"),
        }
    }
}

#[derive(Default)]
struct Observed {
    /// Clients connected at least once.
    connected: HashSet<usize>,
    /// Per client, every event id in arrival order (duplicates kept).
    events: HashMap<usize, Vec<String>>,
    recovered: HashMap<usize, bool>,
    shed: usize,
    shed_without_retry_after: usize,
}

impl Observed {
    fn take(&mut self, report: Report) {
        match report {
            Report::Connected { client } => {
                self.connected.insert(client);
            }
            Report::Event { client, event_id } => {
                self.events.entry(client).or_default().push(event_id);
            }
            Report::SyncDone { client, recovered } => {
                // A second sync:done (a reconnect within the storm) must say the same.
                let first = *self.recovered.entry(client).or_insert(recovered);
                assert!(
                    first && recovered,
                    "client {client}: sync:done recovered false"
                );
            }
            Report::Shed { retry_after } => {
                self.shed += 1;
                if retry_after.is_none() {
                    self.shed_without_retry_after += 1;
                }
            }
        }
    }

    fn distinct(&self, client: usize) -> HashSet<&str> {
        self.events
            .get(&client)
            .map(|ids| ids.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_storm_the_survivor_and_lose_no_event() {
    let mut cluster = Cluster::start(
        "storm",
        0,
        &[
            ("RELAY_CLAIM_IDLE_MS", "1000"),
            ("RELAY_MAX_NEW_CONNECTIONS_PER_ADDR_PER_S", "0"),
        ],
    )
    .await;
    let victim = cluster.add_node_with(&[]).await;
    let survivor = cluster
        .add_node_with(&[("RELAY_MAX_NEW_CONNECTIONS_PER_S", SURVIVOR_RATE)])
        .await;
    let customers = VICTIMS + OWN;
    for i in 0..customers {
        cluster
            .xadd(
                "order.created",
                json!({"order_id": format!("o{i}"), "customer_id": format!("c{i}"), "store_id": "s1", "items": [], "accept_timeout_s": 1}),
            )
            .await;
    }

    let (tx, mut reports) = mpsc::unbounded_channel();
    let (victim_url, survivor_url) = (cluster.url(victim), cluster.url(survivor));
    let tasks: Vec<_> = (0..customers)
        .map(|i| {
            let home = if i < VICTIMS {
                &victim_url
            } else {
                &survivor_url
            };
            customer(i, home.clone(), survivor_url.clone(), tx.clone())
        })
        .collect();
    drop(tx);

    let mut seen = Observed::default();
    // Events appended before a client's first connect are not its to miss.
    collect_until(&mut reports, &mut seen, "every client connected", |s| {
        s.connected.len() == customers
    })
    .await;
    let stop_producer = Arc::new(Notify::new());
    let producer = produce(&cluster, customers, stop_producer.clone());
    collect_until(&mut reports, &mut seen, "an event for every client", |s| {
        (0..customers).all(|c| s.events.get(&c).is_some_and(|e| !e.is_empty()))
    })
    .await;
    let shed_before_kill = seen.shed;

    cluster.nodes[victim].kill().await;
    collect_until(
        &mut reports,
        &mut seen,
        "sync:done from every client of the killed node",
        |s| (0..VICTIMS).all(|c| s.recovered.contains_key(&c)),
    )
    .await;
    stop_producer.notify_one();
    let expected = producer.await.expect("producer");
    collect_until(
        &mut reports,
        &mut seen,
        "every appended event at its customer",
        |s| {
            (0..customers).all(|c| {
                expected[c]
                    .iter()
                    .all(|id| s.distinct(c).contains(id.as_str()))
            })
        },
    )
    .await;
    for task in tasks {
        task.abort();
    }

    let mut duplicates = 0;
    for (c, appended) in expected.iter().enumerate() {
        let got = &seen.events[&c];
        // At least once: a repeat is an event of its own order seen before,
        // never another one; kept once, they are exactly what was appended,
        // in order.
        let mut once = HashSet::new();
        let kept: Vec<&String> = got.iter().filter(|id| once.insert(id.as_str())).collect();
        duplicates += got.len() - kept.len();
        let want: Vec<&String> = appended.iter().collect();
        assert_eq!(kept, want, "customer {c}: every update once, in order");
    }
    assert!(
        (0..VICTIMS).all(|c| seen.recovered.get(&c) == Some(&true)),
        "every client of the killed node recovered"
    );
    let appended: usize = expected.iter().map(Vec::len).sum();
    let shed = metric(
        &survivor_url,
        "relay_connections_shed_total{reason=\"connect_rate\"}",
    )
    .await;
    println!(
        "storm: {VICTIMS} clients moved, {appended} events appended, 0 lost, {duplicates} duplicates, \
         {} handshakes shed during the storm ({shed} counted by the survivor)",
        seen.shed - shed_before_kill
    );
    assert!(
        seen.shed > shed_before_kill && shed >= 1.0,
        "the survivor shed part of the storm"
    );
    assert_eq!(
        seen.shed_without_retry_after, 0,
        "every 503 named its Retry-After"
    );
}
