//! libFuzzer target for the v1 event decoder (`clusterwatch::decode::decode`), the first code
//! that touches bytes from Kafka or a replay file.
//!
//! Any input must end in `Ok` or a typed reject, never a panic, and the limits must hold on the
//! way out: an accepted event never carries more turns or longer ids than configured. Each input
//! is decoded under the production limits and again under tight ones, so the size and turn caps
//! are exercised by small inputs too.

#![no_main]

use clusterwatch::config::DecodeLimits;
use clusterwatch::decode::{decode, DecodeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let production = DecodeLimits::default();
    let tight = DecodeLimits {
        max_message_bytes: 512,
        max_turns: 2,
        max_id_chars: 8,
    };
    for limits in [&production, &tight] {
        match decode(data, limits) {
            Ok(decoded) => {
                let event = &decoded.event;
                assert!(data.len() <= limits.max_message_bytes);
                assert!(event.turns.len() <= limits.max_turns);
                assert!(event.conversation_id.chars().count() <= limits.max_id_chars);
                assert!(event.account_id.chars().count() <= limits.max_id_chars);
                assert!(!event.surface.is_empty() && event.surface.len() <= 64);
            }
            Err(e) => {
                assert!(DecodeError::REASONS.contains(&e.reason()));
                // Rendering the message is what the dead-letter path does with it.
                let _ = e.to_string();
            }
        }
    }
});
