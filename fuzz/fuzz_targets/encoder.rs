//! The event encoder: for any name, id and data, either the builder refuses
//! the name or id, or the frame, parsed by a WHATWG event-stream parser,
//! gives back exactly one event with the data (line endings normalised to
//! LF), the name and the id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_cluster::Event;

/// The WHATWG "interpret an event stream" algorithm, for one buffer.
fn parse(stream: &str) -> Vec<(String, String, String)> {
    let mut events = Vec::new();
    let (mut data, mut name, mut id) = (String::new(), String::new(), String::new());
    let mut rest = stream;
    while !rest.is_empty() {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            usize::from(end < rest.len())
        };
        rest = &rest[end + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                events.push((
                    std::mem::take(&mut data),
                    std::mem::take(&mut name),
                    id.clone(),
                ));
            }
            name.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "event" => name = value.to_owned(),
            "id" if !value.contains('\0') => id = value.to_owned(),
            _ => {}
        }
    }
    events
}

fuzz_target!(|input: (&str, &str, &str)| {
    let (name, id, data) = input;
    let Ok(event) = Event::new().event(name) else {
        assert!(name.contains(['\r', '\n']));
        return;
    };
    let Ok(event) = event.id(id) else {
        assert!(id.contains(['\r', '\n', '\0']));
        return;
    };
    let frame = event.data(data).encode();
    let text = std::str::from_utf8(&frame).expect("frames are UTF-8");
    let expected = data.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(
        parse(text),
        vec![(expected, name.to_owned(), id.to_owned())]
    );
});
