//! The `/demo` live page (RELAY_DEMO): off by default; when on, the page,
//! its embedded assets, an admin token for its Socket.IO connection and a
//! snapshot of the whole cluster; and the page itself in headless Chromium
//! (interop/browser/demo.mjs).

use std::{process::Stdio, time::Duration};

use serde_json::{Value, json};

use crate::support::{
    API_KEY, Cluster, NodeProcess, SECRET, WAIT, connect, expect_event, http, token,
};

const DEMO: (&str, &str) = ("RELAY_DEMO", "true");

async fn get(url: &str) -> reqwest::Response {
    http().get(url).send().await.expect("GET")
}

fn content_type(response: &reqwest::Response) -> String {
    response.headers()["content-type"]
        .to_str()
        .expect("content-type")
        .to_owned()
}

/// `src` and `href` values of the page: every one must be the relay's own.
fn references(html: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            refs.push(part.split('"').next().unwrap_or_default().to_owned());
        }
    }
    refs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_is_off_by_default() {
    let node = NodeProcess::spawn_ready(&[]).await;
    for path in [
        "/demo",
        "/demo/",
        "/demo/demo.js",
        "/demo/socket.io.min.js",
        "/demo/token",
        "/demo/state",
    ] {
        let status = get(&format!("{}{path}", node.url())).await.status();
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_its_page_assets_and_an_admin_token() {
    let node = NodeProcess::spawn_ready(&[DEMO, ("RELAY_API_KEY", API_KEY)]).await;
    let url = node.url();

    let page = get(&format!("{url}/demo")).await;
    assert_eq!(page.status(), 200);
    assert_eq!(content_type(&page), "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    let refs = references(&html);
    for expected in ["/demo/demo.js", "/demo/demo.css", "/demo/socket.io.min.js"] {
        assert!(refs.iter().any(|r| r == expected), "{expected} in {refs:?}");
    }
    for r in &refs {
        assert!(
            r.starts_with("/demo/") || r.starts_with("data:"),
            "external reference {r}"
        );
    }
    assert_eq!(get(&format!("{url}/demo/")).await.url().path(), "/demo");

    for (path, kind) in [
        ("/demo/demo.js", "text/javascript; charset=utf-8"),
        ("/demo/demo.css", "text/css; charset=utf-8"),
        ("/demo/socket.io.min.js", "text/javascript; charset=utf-8"),
    ] {
        let response = get(&format!("{url}{path}")).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(content_type(&response), kind, "{path}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let body = response.text().await.unwrap();
        if path == "/demo/socket.io.min.js" {
            // The vendored official client, license header kept.
            assert!(body.starts_with("/*!\n * Socket.IO v4.8.1"), "{path}");
            assert!(body.contains("Released under the MIT License"));
        } else {
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{path} names a URL"
            );
        }
    }

    let response = get(&format!("{url}/demo/token")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["engine"], "memory");
    assert!(
        body["expires_in_s"]
            .as_u64()
            .is_some_and(|s| (60..=3600).contains(&s)),
        "{body}"
    );
    // A real admin token: the page's socket joins admin_updates.
    let jwt = body["token"].as_str().expect("token");
    let mut page_socket = connect(&url, jwt).await;
    let published = http()
        .post(format!("{url}/api/events"))
        .bearer_auth(API_KEY)
        .json(&json!({"type": "admin.alert", "data": {"level": "info", "message": "hello demo"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 202);
    let alert = expect_event(&mut page_socket, "admin:alert").await;
    assert_eq!(alert.data()["message"], "hello demo");
    // Each page is a user of its own.
    let again: Value = get(&format!("{url}/demo/token"))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(again["token"], body["token"]);

    // Another site's page gets neither a token nor the state.
    for path in ["/demo/token", "/demo/state"] {
        let cross = http()
            .get(format!("{url}{path}"))
            .header("sec-fetch-site", "cross-site")
            .header("origin", "http://elsewhere.example")
            .send()
            .await
            .unwrap();
        assert_eq!(cross.status(), 403, "{path}");
    }
}

/// The snapshot in Redis mode, read from another node than the one whose
/// clients and events made the city: the engine's read-only queries see
/// the whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_state_shows_the_whole_cluster() {
    let cluster = Cluster::start("demo_state", 2, &[DEMO]).await;
    let driver = connect(&cluster.url(1), &token("d1", relay::auth::Role::Driver)).await;
    let ack = driver
        .emit_with_ack(
            "driver:location_update",
            json!({"lat": 12.97, "lng": 77.59, "heading": 90}),
            WAIT,
        )
        .await
        .expect("location ack");
    assert_eq!(ack[0]["ok"], true, "{ack:?}");
    let mut watcher = connect(&cluster.url(1), &token("c1", relay::auth::Role::Customer)).await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [], "accept_timeout_s": 1}),
        )
        .await;
    cluster
        .xadd(
            "delivery.request",
            json!({"order_id": "o1", "pickup": {"lat": 12.971, "lng": 77.594, "name": "Dosa Corner"},
                   "drop": {"lat": 12.95, "lng": 77.61}, "fare": 50, "driver_id": "d1", "timer_s": 1}),
        )
        .await;
    cluster
        .xadd(
            "order.assigned",
            json!({"order_id": "o1", "driver_id": "d1"}),
        )
        .await;
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "preparing"}),
        )
        .await;
    cluster
        .xadd(
            "admin.alert",
            json!({"level": "warning", "message": "rain"}),
        )
        .await;
    watcher
        .wait_for("order:status_update", WAIT)
        .await
        .expect("the order's status update");

    // No merchant of s1 is connected: its offer ends as no_recipient.
    let state = state_until(&cluster.url(0), |s| {
        s["offers"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o["order_id"] == "o1"))
    })
    .await;
    assert_eq!(state["engine"], "redis");
    let order = &state["orders"][0];
    assert_eq!(order["order_id"], "o1");
    assert_eq!(order["status"], "preparing");
    assert_eq!(order["driver_id"], "d1");
    assert_eq!(order["pickup"], json!({"lat": 12.971, "lng": 77.594}));
    assert_eq!(order["drop"], json!({"lat": 12.95, "lng": 77.61}));
    let steps: Vec<String> = order["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|s| {
            s["status"].as_str().map_or_else(
                || format!("driver {}", s["assigned"].as_str().unwrap()),
                str::to_owned,
            )
        })
        .collect();
    assert_eq!(steps, ["placed", "driver d1", "preparing"]);
    assert_eq!(
        state["drivers"],
        json!([{"driver_id": "d1", "lat": 12.97, "lng": 77.59, "heading": 90.0,
                "ts": state["drivers"][0]["ts"], "busy": true}])
    );
    assert_eq!(
        state["stores"],
        json!([{"store_id": "s1", "lat": 12.971, "lng": 77.594, "name": "Dosa Corner",
                "online": false}]),
        "no merchant of s1 is connected: offline"
    );
    assert_eq!(state["alerts"][0]["message"], "rain");
    assert_eq!(state["alerts"][0]["level"], "warning");
    assert_eq!(state["offers"][0]["outcome"], "no_recipient");
    assert_eq!(state["offers"][0]["target"], "merchant_s1");

    // A final status takes the order off the overview; the driver is idle again.
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "delivered"}),
        )
        .await;
    let state = state_until(&cluster.url(0), |s| {
        s["orders"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert_eq!(state["drivers"][0]["busy"], false);
    let index: Vec<String> = redis::cmd("ZRANGE")
        .arg(cluster.key("orders:active"))
        .arg(0)
        .arg(-1)
        .query_async(&mut cluster.redis.connection().await)
        .await
        .expect("ZRANGE");
    assert!(index.is_empty(), "{index:?}");
    driver.disconnect().await;
}

/// Polls `/demo/state` until `done` holds, within [`WAIT`].
async fn state_until(url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = get(&format!("{url}/demo/state")).await;
        assert_eq!(response.status(), 200);
        let state: Value = response.json().await.expect("state");
        if done(&state) {
            return state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "state not as expected within {WAIT:?}: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The page in headless Chromium, opened on node 0 while a small city's
/// drivers, merchant and events go through node 1. Needs Debian's
/// `chromium` and `npm ci` in interop/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_comes_alive_in_a_browser() {
    let root = crate::support::repo_root().to_path_buf();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (or set CHROMIUM)"
    );
    assert!(
        root.join("interop/node_modules/playwright-core").exists()
            && root.join("interop/node_modules/socket.io-client").exists(),
        "interop/node_modules is missing: run `npm ci` in interop/"
    );
    let cluster = Cluster::start(
        "demo_browser",
        2,
        // Drivers report every 300 ms in the script, to keep the test short.
        // The merchant leaves at the end: its stores go offline 1 s later.
        &[
            DEMO,
            ("RELAY_LOCATION_MIN_INTERVAL_MS", "100"),
            ("RELAY_PRESENCE_GRACE_MS", "1000"),
        ],
    )
    .await;
    let screenshot = root.join("target/demo-screenshot.png");
    let _ = std::fs::remove_file(&screenshot);
    let run = tokio::process::Command::new("node")
        .arg(root.join("interop/browser/demo.mjs"))
        .current_dir(root.join("interop"))
        .env("DEMO_PAGE_URL", cluster.url(0))
        .env("DEMO_PEER_URL", cluster.url(1))
        .env("RELAY_API_KEY", API_KEY)
        .env("RELAY_JWT_SECRET", SECRET)
        .env("DEMO_SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .env("DEMO_DEADLINE_MS", "75000")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser run did not end within 90 s")
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "interop/browser/demo.mjs failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    println!("screenshot: {}", screenshot.display());
}
