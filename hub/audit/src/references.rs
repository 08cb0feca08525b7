//! The log's cross-references, checked in log order: an answer names the
//! request it answers and a receipt the message it acknowledges
//! (`refers_to`). Each entry is signed on its own, so a hub could sign an
//! answer to a request that went to someone else, a second answer to one
//! request, or a receipt for a message nobody was sent; only reading the
//! entries against each other shows it. Pure: the caller feeds the entries.
//!
//! What an entry may refer to:
//!
//! | kind | `refers_to` | the entry it names |
//! | --- | --- | --- |
//! | `response` | required | an earlier `request` of the same exchange, sent to the response's sender; one answer per request |
//! | `failure` | optional (a timeout names none) | as for a response: the provider's failed answer |
//! | `receipt` | required | an earlier `request` or `event` of the same exchange, delivered to the receipt's sender; one receipt per recipient and message |
//! | any other | none | |

use std::collections::HashMap;

use hub_core::ids::{ExchangeId, Member};
use hub_core::log::EntryKind;
use serde::Deserialize;

/// What the reference check reads of a record.
#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    pub kind: EntryKind,
    pub exchange_id: ExchangeId,
    pub sender: Member,
    #[serde(default)]
    pub receiver: Option<Member>,
    #[serde(default)]
    pub recipients: Vec<Member>,
    #[serde(default)]
    pub refers_to: Option<u64>,
}

/// A request or event that later entries may still answer or acknowledge.
#[derive(Debug, Clone)]
struct Target {
    exchange: ExchangeId,
    kind: EntryKind,
    /// Whom it went to: an index into [`References::parties`].
    parties: u32,
    /// Those of them that acknowledged it so far, as member indexes.
    acknowledged: Vec<u32>,
}

/// What an entry is to the entries after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Nothing may name it (or its record did not read).
    Inert,
    /// A request or event in [`References::open`].
    Open,
    /// A request answered already.
    Answered,
    /// An event every recipient acknowledged already.
    Acknowledged,
}

/// The entries checked so far, as much as later references need: what is
/// still open in full, what is finished as one byte per entry, so that a
/// long log costs little beyond its unfinished exchanges.
#[derive(Debug, Default)]
pub struct References {
    /// One per entry, by index.
    standing: Vec<Standing>,
    /// The requests and events still open, by index.
    open: HashMap<u64, Target>,
    /// Every distinct set of recipients, each member as an index into
    /// `members` (most entries go to one of a few sets).
    parties: Vec<Vec<u32>>,
    party_ids: HashMap<Vec<u32>, u32>,
    members: Vec<Member>,
    member_ids: HashMap<Member, u32>,
}

impl References {
    pub fn new() -> Self {
        Self::default()
    }

    /// Check the references of entry `index`, the next in the log (indexes
    /// start at 0 and follow each other), and keep what later entries may
    /// need of it. `link` is `None` for a record that does not read.
    pub fn check(&mut self, index: u64, link: Option<&Link>) -> Result<(), String> {
        let result = match link {
            Some(link) => self.check_link(index, link),
            None => Err("the record's kind, exchange_id, sender or refers_to do not read".into()),
        };
        let standing = match link {
            Some(l) if matches!(l.kind, EntryKind::Request | EntryKind::Event) => {
                let to: Vec<u32> = l
                    .receiver
                    .iter()
                    .chain(&l.recipients)
                    .map(|m| self.member_id(m))
                    .collect();
                let target = Target {
                    exchange: l.exchange_id,
                    kind: l.kind,
                    parties: self.party_id(to),
                    acknowledged: Vec::new(),
                };
                self.open.insert(index, target);
                Standing::Open
            }
            _ => Standing::Inert,
        };
        self.standing.push(standing);
        result
    }

    fn check_link(&mut self, index: u64, link: &Link) -> Result<(), String> {
        let kind = link.kind.as_str();
        let Some(t) = link.refers_to else {
            return match link.kind {
                EntryKind::Response | EntryKind::Receipt => Err(format!(
                    "a {kind} must name the entry it {} (refers_to)",
                    answers_or_acknowledges(link.kind)
                )),
                _ => Ok(()),
            };
        };
        if !matches!(
            link.kind,
            EntryKind::Response | EntryKind::Failure | EntryKind::Receipt
        ) {
            return Err(format!(
                "a {kind} refers to no other entry, but this one names entry {t}"
            ));
        }
        let standing = usize::try_from(t)
            .ok()
            .and_then(|i| self.standing.get(i))
            .filter(|_| t < index);
        match standing {
            None => {
                return Err(format!(
                    "refers to entry {t}, which does not come before it"
                ));
            }
            Some(Standing::Inert) => {
                return Err(format!(
                    "refers to entry {t}, which is neither a request nor an event"
                ));
            }
            Some(Standing::Answered) => {
                return Err(format!("request {t} was answered already"));
            }
            Some(Standing::Acknowledged) => {
                return Err(format!(
                    "every recipient of entry {t} acknowledged it already"
                ));
            }
            Some(Standing::Open) => {}
        }
        let Some(target) = self.open.get(&t) else {
            return Err(format!("entry {t} is open but not kept (a verifier bug)"));
        };
        if target.exchange != link.exchange_id {
            return Err(format!(
                "refers to entry {t} of exchange {}, not of its own exchange {}",
                target.exchange, link.exchange_id
            ));
        }
        let parties = self
            .parties
            .get(target.parties as usize)
            .map_or(&[][..], Vec::as_slice);
        let sender = self
            .member_ids
            .get(&link.sender)
            .copied()
            .filter(|s| parties.contains(s));
        let finished = if link.kind == EntryKind::Receipt {
            let Some(recipient) = sender else {
                return Err(format!(
                    "acknowledged by {}, to whom entry {t} was not delivered",
                    link.sender
                ));
            };
            if target.acknowledged.contains(&recipient) {
                return Err(format!("{} acknowledged entry {t} already", link.sender));
            }
            let all = target.acknowledged.len() + 1 == parties.len();
            // A request is finished by its answer, not by receipts.
            (all && target.kind == EntryKind::Event).then_some(Standing::Acknowledged)
        } else {
            if target.kind != EntryKind::Request {
                return Err(format!(
                    "answers entry {t}, an {}: only a request is answered",
                    target.kind.as_str()
                ));
            }
            if sender.is_none() {
                return Err(format!(
                    "answered by {}, but request {t} went to {}",
                    link.sender,
                    self.names(target.parties)
                ));
            }
            Some(Standing::Answered)
        };
        match finished {
            Some(standing) => {
                self.open.remove(&t);
                if let Some(slot) = usize::try_from(t)
                    .ok()
                    .and_then(|i| self.standing.get_mut(i))
                {
                    *slot = standing;
                }
            }
            None => {
                if let (Some(target), Some(recipient)) = (self.open.get_mut(&t), sender) {
                    target.acknowledged.push(recipient);
                }
            }
        }
        Ok(())
    }

    fn member_id(&mut self, member: &Member) -> u32 {
        if let Some(&id) = self.member_ids.get(member) {
            return id;
        }
        let id = u32::try_from(self.members.len()).unwrap_or(u32::MAX);
        self.members.push(member.clone());
        self.member_ids.insert(member.clone(), id);
        id
    }

    fn party_id(&mut self, mut to: Vec<u32>) -> u32 {
        to.sort_unstable();
        to.dedup();
        if let Some(&id) = self.party_ids.get(&to) {
            return id;
        }
        let id = u32::try_from(self.parties.len()).unwrap_or(u32::MAX);
        self.parties.push(to.clone());
        self.party_ids.insert(to, id);
        id
    }

    fn names(&self, parties: u32) -> String {
        let names: Vec<String> = self
            .parties
            .get(parties as usize)
            .into_iter()
            .flatten()
            .filter_map(|&m| self.members.get(m as usize))
            .map(ToString::to_string)
            .collect();
        if names.is_empty() {
            "nobody".into()
        } else {
            names.join(", ")
        }
    }

    /// How many requests and events are kept in full (still open).
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

fn answers_or_acknowledges(kind: EntryKind) -> &'static str {
    if kind == EntryKind::Receipt {
        "acknowledges"
    } else {
        "answers"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(s: &str) -> Member {
        s.parse().expect("member")
    }

    fn id(n: u64) -> ExchangeId {
        ExchangeId::from_parts(1_800_000_000_000 + n, [7; 10])
    }

    fn link(kind: EntryKind, exchange: u64, sender: &str) -> Link {
        Link {
            kind,
            exchange_id: id(exchange),
            sender: member(sender),
            receiver: None,
            recipients: Vec::new(),
            refers_to: None,
        }
    }

    const CONSUMER: &str = "000.00.29.H29/one-stop";
    const PROVIDER: &str = "000.00.00.G01/population";
    const PUBLISHER: &str = "000.00.00.G09/enterprise-registry";
    const TAX: &str = "000.00.00.G08/tax";
    const INSURANCE: &str = "000.00.00.G22/social-insurance";

    /// Entry 0 a request of exchange 1 to the provider, entry 1 an event
    /// of exchange 2 to tax and social insurance, entry 2 a refusal.
    fn log() -> References {
        let mut refs = References::new();
        let request = Link {
            receiver: Some(member(PROVIDER)),
            ..link(EntryKind::Request, 1, CONSUMER)
        };
        let event = Link {
            recipients: vec![member(TAX), member(INSURANCE)],
            ..link(EntryKind::Event, 2, PUBLISHER)
        };
        let refusal = link(EntryKind::Refusal, 3, CONSUMER);
        for (i, l) in [request, event, refusal].iter().enumerate() {
            assert_eq!(refs.check(i as u64, Some(l)), Ok(()));
        }
        refs
    }

    fn answer(kind: EntryKind, exchange: u64, sender: &str, to: u64) -> Link {
        Link {
            refers_to: Some(to),
            ..link(kind, exchange, sender)
        }
    }

    #[test]
    fn a_log_of_answers_and_receipts_in_order_passes() {
        let mut refs = log();
        let entries = [
            answer(EntryKind::Response, 1, PROVIDER, 0),
            answer(EntryKind::Receipt, 2, TAX, 1),
            answer(EntryKind::Receipt, 2, INSURANCE, 1),
            // A timeout names nothing; the provider's failed answer does.
            link(EntryKind::Failure, 1, CONSUMER),
        ];
        for (i, l) in entries.iter().enumerate() {
            assert_eq!(refs.check(3 + i as u64, Some(l)), Ok(()), "{l:?}");
        }
        assert_eq!(refs.open(), 0, "everything answered and acknowledged");
    }

    #[test]
    fn a_request_answered_twice_is_caught_at_the_second_answer() {
        let mut refs = log();
        assert_eq!(
            refs.check(3, Some(&answer(EntryKind::Response, 1, PROVIDER, 0))),
            Ok(())
        );
        let second = refs.check(4, Some(&answer(EntryKind::Failure, 1, PROVIDER, 0)));
        assert_eq!(second, Err("request 0 was answered already".into()));
    }

    #[test]
    fn a_message_acknowledged_twice_by_one_recipient_is_caught() {
        let mut refs = log();
        let receipt = answer(EntryKind::Receipt, 2, TAX, 1);
        assert_eq!(refs.check(3, Some(&receipt)), Ok(()));
        assert_eq!(
            refs.check(4, Some(&receipt)),
            Err(format!("{TAX} acknowledged entry 1 already"))
        );
        // Once every recipient has it, the event is let go of, and a
        // further receipt is still refused.
        let other = answer(EntryKind::Receipt, 2, INSURANCE, 1);
        assert_eq!(refs.check(5, Some(&other)), Ok(()));
        assert_eq!(refs.open(), 1, "only the request is still open");
        assert_eq!(
            refs.check(6, Some(&other)),
            Err("every recipient of entry 1 acknowledged it already".into())
        );
    }

    #[test]
    fn answers_and_receipts_from_whoever_was_not_sent_the_message_are_caught() {
        let mut refs = log();
        assert_eq!(
            refs.check(3, Some(&answer(EntryKind::Response, 1, TAX, 0))),
            Err(format!(
                "answered by {TAX}, but request 0 went to {PROVIDER}"
            ))
        );
        assert_eq!(
            refs.check(4, Some(&answer(EntryKind::Receipt, 2, CONSUMER, 1))),
            Err(format!(
                "acknowledged by {CONSUMER}, to whom entry 1 was not delivered"
            ))
        );
    }

    #[test]
    fn references_to_the_wrong_entry_are_caught() {
        let mut refs = log();
        let cases = [
            (
                answer(EntryKind::Response, 2, PROVIDER, 1),
                "answers entry 1, an event: only a request is answered".to_owned(),
            ),
            (
                answer(EntryKind::Response, 9, PROVIDER, 0),
                format!(
                    "refers to entry 0 of exchange {}, not of its own exchange {}",
                    id(1),
                    id(9)
                ),
            ),
            (
                answer(EntryKind::Receipt, 3, TAX, 2),
                "refers to entry 2, which is neither a request nor an event".to_owned(),
            ),
            (
                answer(EntryKind::Receipt, 2, TAX, 99),
                "refers to entry 99, which does not come before it".to_owned(),
            ),
            (
                answer(EntryKind::Refusal, 1, CONSUMER, 0),
                "a refusal refers to no other entry, but this one names entry 0".to_owned(),
            ),
            (
                link(EntryKind::Receipt, 2, TAX),
                "a receipt must name the entry it acknowledges (refers_to)".to_owned(),
            ),
        ];
        for (i, (l, expected)) in cases.iter().enumerate() {
            assert_eq!(refs.check(3 + i as u64, Some(l)), Err(expected.clone()));
        }
        // None of the refused ones counted: the right receipt still passes.
        assert_eq!(
            refs.check(9, Some(&answer(EntryKind::Receipt, 2, TAX, 1))),
            Ok(())
        );
    }

    #[test]
    fn a_record_that_does_not_read_fails_and_keeps_the_indexes_in_step() {
        let mut refs = log();
        assert!(refs.check(3, None).is_err());
        assert_eq!(
            refs.check(4, Some(&answer(EntryKind::Receipt, 3, TAX, 3))),
            Err("refers to entry 3, which is neither a request nor an event".into())
        );
    }
}
