//! The simulated backend's side of the relay's HTTP API: `POST /api/events`
//! to append events (the one way in that works for embedded and Redis
//! nodes alike) and `GET /api/outcomes` to learn what merchants and drivers
//! answered.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Value, json};

use relay::config::Secret;

/// Tries of one request, each on the next URL: a node restarting behind
/// `--url` costs a retry, not an event.
const ATTEMPTS: u32 = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The relay refused the request (4xx): retrying would not help.
    #[error("refused with {status}: {message}")]
    Refused { status: u16, message: String },
    /// No node answered well after every try.
    #[error("no node answered: {0}")]
    Unavailable(String),
}

/// One line of `GET /api/outcomes` (CONTRACT §4).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OfferOutcome {
    pub event_id: String,
    pub event: String,
    pub order_id: String,
    /// `merchant_{store}`, `driver_{id}` or `geo`.
    pub target: String,
    /// `acked`, `timeout` or `no_recipient`.
    pub outcome: String,
    #[serde(default)]
    pub response: Option<Value>,
}

impl OfferOutcome {
    /// `accepted` of the client's ack, when it acked.
    pub fn accepted(&self) -> Option<bool> {
        self.response.as_ref()?.get("accepted")?.as_bool()
    }

    pub fn reason(&self) -> Option<&str> {
        self.response.as_ref()?.get("reason")?.as_str()
    }
}

#[derive(Deserialize)]
struct Outcomes {
    outcomes: Vec<OfferOutcome>,
}

pub struct RelayApi {
    http: reqwest::Client,
    urls: Vec<String>,
    key: Secret,
    next: AtomicUsize,
}

impl RelayApi {
    pub fn new(urls: Vec<String>, key: Secret) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            http,
            urls: urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            key,
            next: AtomicUsize::new(0),
        }
    }

    fn url(&self, path: &str) -> String {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len();
        format!("{}{path}", self.urls[i])
    }

    /// Appends one event; returns its `event_id` (the stream entry id).
    pub async fn publish(&self, kind: &str, data: Value) -> Result<String, ApiError> {
        let body = json!({ "type": kind, "data": data });
        let reply = self
            .send(|url| self.http.post(url).json(&body), "/api/events")
            .await?;
        reply
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Unavailable(format!("no event_id in {reply}")))
    }

    /// Posts `body` as is, once: for deliberately malformed events.
    pub async fn publish_raw(&self, body: Value) -> Result<u16, ApiError> {
        let response = self
            .http
            .post(self.url("/api/events"))
            .bearer_auth(self.key.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| ApiError::Unavailable(describe(e)))?;
        Ok(response.status().as_u16())
    }

    /// The newest `limit` outcomes, oldest first.
    pub async fn outcomes(&self, limit: usize) -> Result<Vec<OfferOutcome>, ApiError> {
        let path = format!("/api/outcomes?limit={limit}");
        let reply = self.send(|url| self.http.get(url), &path).await?;
        serde_json::from_value::<Outcomes>(reply)
            .map(|o| o.outcomes)
            .map_err(|e| ApiError::Unavailable(format!("unexpected outcomes body: {e}")))
    }

    /// Whether each store is online (`GET /api/presence`), in batches of
    /// the API's 1000 ids.
    pub async fn presence(&self, stores: &[String]) -> Result<Vec<(String, bool)>, ApiError> {
        let mut online = Vec::with_capacity(stores.len());
        for batch in stores.chunks(1000) {
            let query: String = form_query(batch.iter().map(|s| ("store_id", s.as_str())));
            let reply = self
                .send(|url| self.http.get(url), &format!("/api/presence?{query}"))
                .await?;
            for id in batch {
                let state = reply["stores"][id.as_str()]["online"].as_bool();
                online.push((id.clone(), state == Some(true)));
            }
        }
        Ok(online)
    }

    async fn send(
        &self,
        request: impl Fn(String) -> reqwest::RequestBuilder,
        path: &str,
    ) -> Result<Value, ApiError> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
            let result = request(self.url(path))
                .bearer_auth(self.key.expose())
                .send()
                .await;
            let response = match result {
                Ok(r) => r,
                Err(e) => {
                    last = describe(e);
                    continue;
                }
            };
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(body);
            }
            let message = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error message")
                .to_owned();
            if status.is_client_error() && status.as_u16() != 429 {
                return Err(ApiError::Refused {
                    status: status.as_u16(),
                    message,
                });
            }
            last = format!("{status}: {message}");
        }
        Err(ApiError::Unavailable(last))
    }
}

/// `name=value&...`, each percent-encoded.
fn form_query<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        query.append_pair(name, value);
    }
    query.finish()
}

/// reqwest's message and its causes ("error sending request: ...:
/// Connection refused"), without the URL.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_outcomes_of_both_engines() {
        // Redis nodes leave `response` out when there is none; the memory
        // engine writes null.
        let body = json!({"outcomes": [
            {"event_id": "1-0", "event": "merchant:new_order", "order_id": "o1",
             "target": "merchant_s1", "outcome": "acked",
             "response": {"accepted": false, "reason": "busy"}, "latency_ms": 812, "node": "n1"},
            {"event_id": "2-0", "event": "delivery:new_request", "order_id": "o1",
             "target": "geo", "outcome": "no_recipient", "latency_ms": "0", "node": "n2"},
            {"event_id": "3-0", "event": "delivery:new_request", "order_id": "o1",
             "target": "driver_d1", "outcome": "timeout", "response": null, "latency_ms": 30000, "node": "n2"},
        ]});
        let outcomes = serde_json::from_value::<Outcomes>(body).unwrap().outcomes;
        assert_eq!(outcomes[0].accepted(), Some(false));
        assert_eq!(outcomes[0].reason(), Some("busy"));
        assert_eq!(outcomes[1].accepted(), None);
        assert_eq!(outcomes[2].response, None);
    }
}
