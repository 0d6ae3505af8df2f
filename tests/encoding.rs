//! experiment
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::{FutureExt, StreamExt};

fn parse(chunks: &[&[u8]]) -> Vec<String> {
    let items: Vec<Result<Bytes, std::convert::Infallible>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(items)
        .eventsource()
        .collect::<Vec<_>>()
        .now_or_never()
        .unwrap()
        .into_iter()
        .map(|r| format!("{:?}", r))
        .collect()
}

#[test]
fn experiment() {
    for case in [
        &[&b"data: a\r\r"[..]][..],
        &[b"data: a\r\rdata: b\r\r", b"x"],
        &[b"data: a\r", b"\n\n"],
        &[b"data: a\rdata: b\r\n\r\n"],
        &[b"retry: +5\ndata: x\n\n"],
        &[b"retry: 5\n\ndata: x\n\n"],
        &[b"id: 1\ndata: x\n\ndata: y\n\n"],
        &[b"event: \ndata: x\n\n"],
        &[b"\xEF\xBB\xBFdata: x\n\n"],
        &[b"\xEF\xBB", b"\xBFdata: x\n\n"],
        &[b"\n", b"\xEF\xBB\xBFdata: x\n\n"],
        &[b"data: \xff\n\ndata: y\n\n"],
        &[b"id: a\0b\ndata: x\n\n"],
        &[b"data: x\n\n\n"],
        &[b"dat\xC3", b"\xA9a: x\n\n"],
    ] {
        let r = std::panic::catch_unwind(|| parse(case));
        println!(
            "{:?} => {:?}",
            case.iter()
                .map(|c| String::from_utf8_lossy(c))
                .collect::<Vec<_>>(),
            r.map_err(|_| "PANIC")
        );
    }
}
