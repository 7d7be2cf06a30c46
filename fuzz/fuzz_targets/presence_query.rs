//! `GET /api/presence` (CONTRACT §7): the query string, any bytes, as the
//! handler reads it.
//!
//! Beyond "no panic": an accepted query names 1 to 1000 ids, each non-empty,
//! at most 256 bytes and once; written back as a query string they read
//! back the same; a refusal is one of the bounded reasons, and "too many"
//! only beyond 1000.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::{
    events::PresenceKind,
    http::{MAX_ID_BYTES, MAX_IDS, QueryError, presence_query},
    metrics::PresenceQueryRejection,
};

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    match presence_query(Some(&query)) {
        Ok(ids) => {
            assert!(!ids.is_empty() && ids.len() <= MAX_IDS, "{}", ids.len());
            for (n, who) in ids.iter().enumerate() {
                assert!(!who.id.is_empty() && who.id.len() <= MAX_ID_BYTES);
                assert!(!ids[..n].contains(who), "{who} twice");
            }
            let mut again = form_urlencoded::Serializer::new(String::new());
            for who in &ids {
                let name = match who.kind {
                    PresenceKind::Store => "store_id",
                    PresenceKind::Driver => "driver_id",
                };
                again.append_pair(name, &who.id);
            }
            assert_eq!(presence_query(Some(&again.finish())).as_ref(), Ok(&ids));
        }
        Err(e) => {
            let label = e.label();
            assert!(PresenceQueryRejection::ALL.contains(&label));
            match e {
                QueryError::TooMany(n) => {
                    assert!(n > MAX_IDS);
                    assert_eq!(label, PresenceQueryRejection::TooManyIds);
                }
                _ => assert_eq!(label, PresenceQueryRejection::BadQuery),
            }
        }
    }
});
