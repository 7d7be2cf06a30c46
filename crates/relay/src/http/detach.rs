//! Copies a request's URI and headers out of hyper's connection read buffer.
//!
//! hyper parses the request line and headers as slices of its read buffer (16 KiB
//! or more per connection). engineioxide keeps the request parts for the whole
//! life of a Socket.IO session, so without this copy every idle websocket pins
//! that buffer: about a third of its memory. A copy costs well under a
//! microsecond, once per HTTP request.

use axum::{
    extract::{OriginalUri, Request},
    http::{HeaderMap, HeaderValue, Uri},
};

pub async fn detach_from_read_buffer(mut req: Request) -> Request {
    *req.uri_mut() = owned_uri(req.uri());
    if let Some(OriginalUri(uri)) = req.extensions().get::<OriginalUri>() {
        let owned = OriginalUri(owned_uri(uri));
        req.extensions_mut().insert(owned);
    }
    let headers = std::mem::take(req.headers_mut());
    *req.headers_mut() = owned_headers(headers);
    req
}

fn owned_uri(uri: &Uri) -> Uri {
    // Parsing what was already a valid URI cannot fail; keep the original if it did.
    Uri::try_from(uri.to_string()).unwrap_or_else(|_| uri.clone())
}

fn owned_headers(headers: HeaderMap) -> HeaderMap {
    let mut owned = HeaderMap::with_capacity(headers.len());
    let mut last = None;
    for (name, value) in headers {
        // `None` repeats the previous name for multi-valued headers.
        let name = match name {
            Some(name) => {
                last = Some(name.clone());
                name
            }
            None => match &last {
                Some(name) => name.clone(),
                None => continue,
            },
        };
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or(value.clone());
        copy.set_sensitive(value.is_sensitive());
        owned.append(name, copy);
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_uri_and_every_header_value() {
        let req = Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket&token=abc")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x-custom", "v")
            .body(axum::body::Body::empty())
            .unwrap();
        let req = detach_from_read_buffer(req).await;
        assert_eq!(req.uri(), "/socket.io/?EIO=4&transport=websocket&token=abc");
        let cookies: Vec<_> = req.headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(req.headers()["x-custom"], "v");
    }
}
