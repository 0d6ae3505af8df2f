//! The bus envelope decoder: any bytes from the bus decode to an envelope or
//! a typed error, never a panic; a decoded envelope encodes (never a
//! `WireError`) to bytes that decode to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_cluster::wire::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        let again = envelope.encode().expect("a decoded envelope encodes");
        let back = Envelope::decode(&again).expect("our own encoding decodes");
        assert_eq!(back, envelope);
        let _ = envelope.to_event();
    }
});
