//! Recovery: may a client's missed publications be replayed, and which?
//!
//! Sits beside `broker`, not inside a backend: `session` joins the channel
//! live first (held in the hub), reads the broker's history, and asks
//! [`plan`] to merge the two views. The answer is all or nothing: a client
//! is either given every publication between its position and the join
//! position, in order and without duplicates, or told `recovered: false`.

use crate::broker::{History, Position};
use crate::publication::Publication;
use std::sync::Arc;

crate::metrics::labels! {
    /// Why a recovery was refused; also the metric label.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Refusal {
        /// The channel's state was lost since the client's position.
        EpochChanged => "epoch_changed",
        /// The client claims an offset the channel never reached.
        Ahead => "ahead",
        /// More missed publications than `recovery_max`.
        TooMany => "too_many",
        /// History no longer holds part of the range (size or age).
        Gap => "gap",
        /// History could not be read.
        Unavailable => "unavailable",
        /// A resumed channel for which the client gave no position.
        NoPosition => "no_position",
    }
}

/// How many publications a client at `since` missed before `start`, or why
/// it cannot be recovered without reading history.
pub(crate) fn missed(
    since_epoch: &str,
    since_offset: u64,
    start: &Position,
    max: usize,
) -> Result<u64, Refusal> {
    if *start.epoch != *since_epoch {
        return Err(Refusal::EpochChanged);
    }
    if since_offset > start.offset {
        return Err(Refusal::Ahead);
    }
    let need = start.offset - since_offset;
    if need > max as u64 {
        return Err(Refusal::TooMany);
    }
    Ok(need)
}

/// The publications to replay for a client at `since_offset` that joined
/// live at `start`: exactly offsets `since_offset+1 ..= start.offset`, or a refusal.
pub(crate) fn plan(
    since_offset: u64,
    start: &Position,
    history: History,
) -> Result<Vec<Arc<Publication>>, Refusal> {
    if history.epoch.as_deref() != Some(&*start.epoch) {
        return Err(Refusal::EpochChanged);
    }
    let mut next = since_offset + 1;
    let mut out = Vec::new();
    for (offset, frame) in history.entries {
        if offset > start.offset {
            // Published after the join: the hub holds it already.
            break;
        }
        if offset < next {
            continue;
        }
        if offset != next {
            return Err(Refusal::Gap);
        }
        out.push(Publication::new(Arc::clone(&start.epoch), offset, frame));
        next += 1;
    }
    if next != start.offset + 1 {
        return Err(Refusal::Gap);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn offsets(got: Vec<Arc<Publication>>) -> Vec<u64> {
        got.iter().map(|p| p.offset).collect()
    }

    fn pos(e: &str, o: u64) -> Position {
        Position {
            epoch: e.into(),
            offset: o,
        }
    }

    fn hist(e: &str, offsets: impl IntoIterator<Item = u64>) -> History {
        History {
            epoch: Some(e.into()),
            entries: offsets
                .into_iter()
                .map(|o| (o, Bytes::from(o.to_string())))
                .collect(),
        }
    }

    #[test]
    fn replays_exactly_the_missed_range() {
        let got = plan(41, &pos("E", 45), hist("E", 40..=50)).expect("recovered");
        assert_eq!(offsets(got), [42, 43, 44, 45]);
        let none = plan(45, &pos("E", 45), hist("E", [])).expect("nothing missed");
        assert!(none.is_empty());
    }

    #[test]
    fn never_partial() {
        assert_eq!(
            plan(41, &pos("E", 45), hist("E", 43..=50)).map(offsets),
            Err(Refusal::Gap),
            "oldest gone"
        );
        assert_eq!(
            plan(41, &pos("E", 45), hist("E", [42, 43, 45])).map(offsets),
            Err(Refusal::Gap),
            "hole"
        );
        assert_eq!(
            plan(41, &pos("E", 45), hist("E", 42..=44)).map(offsets),
            Err(Refusal::Gap),
            "short"
        );
        assert_eq!(
            plan(41, &pos("E", 45), hist("F", 40..=50)).map(offsets),
            Err(Refusal::EpochChanged)
        );
        let none = History::default();
        assert_eq!(
            plan(41, &pos("E", 45), none).map(offsets),
            Err(Refusal::EpochChanged)
        );
    }

    #[test]
    fn missed_checks_epoch_direction_and_size() {
        assert_eq!(missed("E", 41, &pos("E", 45), 10), Ok(4));
        assert_eq!(
            missed("X", 41, &pos("E", 45), 10),
            Err(Refusal::EpochChanged)
        );
        assert_eq!(missed("E", 46, &pos("E", 45), 10), Err(Refusal::Ahead));
        assert_eq!(missed("E", 1, &pos("E", 45), 10), Err(Refusal::TooMany));
    }
}
