//! The backend learns what merchants and drivers answered the way a real
//! one does: from the relay's outcomes (CONTRACT §4), here through
//! `GET /api/outcomes` so that embedded nodes work too. Each new outcome
//! goes to its order's inbox.

use std::{
    collections::{HashSet, VecDeque},
    time::Duration,
};

use super::{Ctx, api::OfferOutcome, clock::real_sleep, desk::Signal, stats::bump};

const POLL_EVERY: Duration = Duration::from_millis(250);
const SMALL_PAGE: usize = 50;
const LARGE_PAGE: usize = 1000;

/// Outcomes already handed on, by `(event_id, target)`: exactly one
/// outcome exists per offer, so that pair names it.
#[derive(Default)]
pub struct Feed {
    seen: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

/// Several pages' worth: an outcome older than this is off every page.
const SEEN_CAPACITY: usize = 4 * LARGE_PAGE;

impl Feed {
    /// The outcomes of `page` not seen before, and whether the page may
    /// have missed some (every one of a full page was new).
    pub fn fresh(&mut self, page: Vec<OfferOutcome>, asked: usize) -> (Vec<OfferOutcome>, bool) {
        let total = page.len();
        let fresh: Vec<OfferOutcome> = page
            .into_iter()
            .filter(|o| {
                let key = (o.event_id.clone(), o.target.clone());
                if self.seen.contains(&key) {
                    return false;
                }
                self.seen.insert(key.clone());
                self.order.push_back(key);
                true
            })
            .collect();
        while self.order.len() > SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        let gap = total == asked && fresh.len() == total;
        (fresh, gap)
    }
}

/// Polls the outcomes until the run stops. A small page normally; a large
/// one right away when a page was all new (a burst may have pushed some
/// off it).
pub async fn read(ctx: &Ctx) {
    let mut feed = Feed::default();
    let mut page = LARGE_PAGE;
    let mut failing = false;
    loop {
        let gap = match ctx.api.outcomes(page).await {
            Ok(outcomes) => {
                if failing {
                    tracing::info!("reading outcomes again");
                    failing = false;
                }
                let (fresh, gap) = feed.fresh(outcomes, page);
                for outcome in fresh {
                    let order_id = outcome.order_id.clone();
                    ctx.desk.deliver(&order_id, Signal::Outcome(outcome));
                }
                gap
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read outcomes; orders wait");
                    bump(&ctx.stats.errors);
                    failing = true;
                }
                false
            }
        };
        page = if gap || failing {
            LARGE_PAGE
        } else {
            SMALL_PAGE
        };
        let pause = if gap { Duration::ZERO } else { POLL_EVERY };
        if real_sleep(pause, &ctx.stop).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(event_id: &str, target: &str) -> OfferOutcome {
        OfferOutcome {
            event_id: event_id.into(),
            event: "delivery:new_request".into(),
            order_id: "o1".into(),
            target: target.into(),
            outcome: "timeout".into(),
            response: None,
        }
    }

    #[test]
    fn each_offer_outcome_is_handed_on_once() {
        let mut feed = Feed::default();
        let (fresh, gap) = feed.fresh(vec![outcome("1-0", "driver_d1")], 50);
        assert_eq!((fresh.len(), gap), (1, false));
        let (fresh, _) = feed.fresh(
            vec![
                outcome("1-0", "driver_d1"),
                outcome("1-0", "driver_d2"),
                outcome("2-0", "driver_d1"),
            ],
            50,
        );
        let targets: Vec<_> = fresh
            .iter()
            .map(|o| (o.event_id.as_str(), o.target.as_str()))
            .collect();
        assert_eq!(targets, [("1-0", "driver_d2"), ("2-0", "driver_d1")]);
    }

    #[test]
    fn a_full_page_of_news_asks_for_a_larger_one() {
        let mut feed = Feed::default();
        let page = vec![outcome("1-0", "a"), outcome("2-0", "a")];
        assert!(feed.fresh(page, 2).1);
        let page = vec![outcome("2-0", "a"), outcome("3-0", "a")];
        assert!(!feed.fresh(page, 2).1);
    }
}
