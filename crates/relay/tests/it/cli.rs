//! The command line: one clear line and exit code 2 for a bad setting, and
//! `relay token`.

use std::process::Stdio;

use relay::auth::{Role, Verifier};
use relay::config::{JwtConfig, JwtKeySource, Secret};

use crate::support::{NodeProcess, WAIT};

/// Runs `relay` to its end, within [`WAIT`]: a node that starts when it
/// should have refused its settings fails the test instead of hanging it
/// (and listens on a free port, not on 3000).
fn relay(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(args)
            .env_clear()
            .env("RELAY_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run relay");
        tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("relay {args:?} with {env:?} still running after {WAIT:?}"))
            .expect("relay output")
    })
}

fn assert_config_error(output: &std::process::Output, setting: &str) {
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(setting), "names {setting}: {stderr}");
}

#[test]
fn bad_settings_stop_start_up_with_one_line_naming_them() {
    let secret = ("RELAY_JWT_SECRET", "s");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "RELAY_JWT_SECRET"),
        (
            &[secret, ("RELAY_JWT_PUBLIC_KEY", "/tmp/k.pem")],
            "RELAY_JWT_SECRET",
        ),
        (
            &[secret, ("RELAY_LOCATION_TTL_S", "soon")],
            "RELAY_LOCATION_TTL_S",
        ),
        (&[secret, ("RELAY_ADDR", "nowhere")], "RELAY_ADDR"),
        (&[secret, ("REDIS_URL", "http://x")], "REDIS_URL"),
        (
            &[secret, ("RELAY_MAX_DELIVERIES", "0")],
            "RELAY_MAX_DELIVERIES",
        ),
        (
            &[("RELAY_JWT_PUBLIC_KEY", "/nonexistent.pem")],
            "RELAY_JWT_PUBLIC_KEY",
        ),
        (&[secret, ("RELAY_LOG_FORMAT", "xml")], "RELAY_LOG_FORMAT"),
        (
            &[secret, ("RELAY_WORKER_THREADS", "1025")],
            "RELAY_WORKER_THREADS",
        ),
        // Numbers out of their documented range (README, Configuration).
        (
            &[secret, ("RELAY_POLLING_MAX_PAYLOAD_BYTES", "1")],
            "RELAY_POLLING_MAX_PAYLOAD_BYTES",
        ),
        (&[secret, ("RELAY_HISTORY_SIZE", "0")], "RELAY_HISTORY_SIZE"),
        (
            &[secret, ("RELAY_WS_MAX_MESSAGE_BYTES", "1024")],
            "RELAY_WS_MAX_MESSAGE_BYTES",
        ),
        (
            &[secret, ("RELAY_PING_INTERVAL_MS", "18446744073709551615")],
            "RELAY_PING_INTERVAL_MS",
        ),
        (
            &[secret, ("RELAY_PING_TIMEOUT_MS", "0")],
            "RELAY_PING_TIMEOUT_MS",
        ),
        (
            &[secret, ("RELAY_CLAIM_IDLE_MS", "1")],
            "RELAY_CLAIM_IDLE_MS",
        ),
        (
            &[secret, ("RELAY_SHUTDOWN_GRACE_S", "18446744073709551615")],
            "RELAY_SHUTDOWN_GRACE_S",
        ),
        (
            &[secret, ("RELAY_HISTORY_TTL_S", "99999999999")],
            "RELAY_HISTORY_TTL_S",
        ),
        (
            &[secret, ("RELAY_JWT_LEEWAY_S", "31536000")],
            "RELAY_JWT_LEEWAY_S",
        ),
        (
            &[secret, ("RELAY_MAX_CONNECTIONS", "18446744073709551615")],
            "RELAY_MAX_CONNECTIONS",
        ),
        (
            &[secret, ("RELAY_CLIENT_EVENTS_PER_S", "4294967295")],
            "RELAY_CLIENT_EVENTS_PER_S",
        ),
        (
            &[
                secret,
                ("RELAY_LOCATION_TTL_S", "60"),
                ("RELAY_LOCATION_MIN_INTERVAL_MS", "60000"),
            ],
            "RELAY_LOCATION_MIN_INTERVAL_MS",
        ),
        // TLS files: readable PEM, paired, and only with a rediss:// URL.
        (
            &[
                secret,
                ("REDIS_URL", "rediss://127.0.0.1:6380"),
                ("RELAY_REDIS_CA_FILE", "/nonexistent-ca.pem"),
            ],
            "RELAY_REDIS_CA_FILE",
        ),
        (
            &[
                secret,
                ("REDIS_URL", "rediss://127.0.0.1:6380"),
                ("RELAY_REDIS_CLIENT_CERT", "/nonexistent-cert.pem"),
            ],
            "RELAY_REDIS_CLIENT_KEY",
        ),
        (
            &[
                secret,
                ("REDIS_URL", "rediss://127.0.0.1:6380"),
                ("RELAY_REDIS_CA_FILE", "/etc/hostname"),
            ],
            "RELAY_REDIS_CA_FILE",
        ),
    ];
    for (env, setting) in cases {
        assert_config_error(&relay(&["serve"], env), setting);
    }
    // Flags name themselves too, and win over the environment.
    let output = relay(&["serve", "--claim-idle-ms", "-5"], &[secret]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn token_mints_a_token_the_relay_accepts() {
    let output = relay(
        &[
            "token",
            "--sub",
            "m1",
            "--role",
            "merchant",
            "--store-ids",
            "s1,s2",
            "--ttl",
            "5m",
        ],
        &[("RELAY_JWT_SECRET", "cli-secret")],
    );
    assert!(output.status.success(), "{output:?}");
    let jwt = String::from_utf8(output.stdout).expect("utf8");
    let verifier = Verifier::new(&JwtConfig {
        key: JwtKeySource::Secret(Secret::new("cli-secret")),
        issuer: None,
        audience: None,
        leeway: std::time::Duration::from_secs(5),
    })
    .expect("verifier");
    let principal = verifier.verify(jwt.trim()).expect("valid token");
    assert_eq!(principal.role(), Role::Merchant);
    assert_eq!(principal.store_ids(), ["s1", "s2"]);
}

#[test]
fn token_refuses_a_merchant_without_stores() {
    let output = relay(
        &["token", "--sub", "m1", "--role", "merchant"],
        &[("RELAY_JWT_SECRET", "x")],
    );
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn help_never_prints_secret_values_from_the_environment() {
    let output = relay(
        &["serve", "--help"],
        &[
            ("RELAY_JWT_SECRET", "hunter2"),
            ("RELAY_API_KEY", "k3y"),
            ("REDIS_URL", "redis://:pw9@h"),
        ],
    );
    let help = String::from_utf8_lossy(&output.stdout);
    for secret in ["hunter2", "k3y", "pw9"] {
        assert!(!help.contains(secret), "{secret} printed by --help");
    }
}

#[test]
fn missing_arguments_are_named_on_the_one_line() {
    let output = relay(&["token", "--role", "admin"], &[("RELAY_JWT_SECRET", "s")]);
    assert_config_error(&output, "--sub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_relay_variables_are_warned_about_once_and_the_node_starts() {
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-unknown-vars.log");
    let mut node = NodeProcess::spawn_logging_to(
        &[
            ("RELAY_HISTROY_SIZE", "value-that-must-not-leak"),
            ("RELAY_BRAND_NEW_THING", "another-value-that-must-not-leak"),
            // Kubernetes service links for a Service named `relay`: not typos.
            ("RELAY_SERVICE_HOST", "10.0.0.1"),
            ("RELAY_PORT_3000_TCP_ADDR", "10.0.0.1"),
        ],
        &log,
    )
    .await;
    node.terminate();
    assert_eq!(node.exit_code().await, Some(0));
    let logs = std::fs::read_to_string(&log).expect("log");
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("is not a relay setting"))
        .collect();
    assert_eq!(warnings.len(), 2, "one line per unknown variable: {logs}");
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("RELAY_HISTROY_SIZE")
                && l.contains("did you mean RELAY_HISTORY_SIZE?")),
        "{logs}"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("RELAY_BRAND_NEW_THING") && !l.contains("did you mean")),
        "{logs}"
    );
    assert!(
        !logs.contains("must-not-leak"),
        "a value was logged: {logs}"
    );
}

/// `RELAY_WORKER_THREADS` sets the runtime's worker threads (the start-up
/// line says how many); tokio's own `TOKIO_WORKER_THREADS`, which makes
/// tokio panic when malformed, is not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_are_the_settings_and_tokios_variable_is_ignored() {
    for threads in ["3", "1"] {
        let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cli-worker-threads-{threads}.log"));
        let mut node = NodeProcess::spawn_logging_to(
            &[
                ("RELAY_WORKER_THREADS", threads),
                ("TOKIO_WORKER_THREADS", "not-a-number"),
                ("RELAY_LOG_FORMAT", "json"),
            ],
            &log,
        )
        .await;
        node.wait_ready().await;
        node.terminate();
        assert_eq!(node.exit_code().await, Some(0));
        let logs = std::fs::read_to_string(&log).expect("log");
        assert!(
            logs.lines().any(|l| l.contains("starting the runtime")
                && l.contains(&format!("\"worker_threads\":{threads}"))),
            "RELAY_WORKER_THREADS={threads}: {logs}"
        );
    }
}
