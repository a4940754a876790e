//! A JSON array answer decoded element by element as its body arrives: a List Accounts of
//! 100,000 accounts (about 25 MB) is never held whole, only the element being received is,
//! and each element is kept in whatever form the caller keeps (`keep`).

use std::marker::PhantomData;
use std::sync::Mutex;

use serde::de::{DeserializeOwned, IgnoredAny};

use super::lock;

/// Where a list's elements go as its body arrives: each element of the JSON array, in order.
/// The retries of one call share it: each attempt starts it again.
pub(super) trait Elements: Send {
    /// A new attempt: forget what an earlier one decoded.
    fn restart(&mut self);
    /// One element's JSON (whitespace trimmed).
    ///
    /// Errors: serde_json's, for an element that is not the expected shape.
    fn element(&mut self, json: &[u8]) -> serde_json::Result<()>;
}

/// The decoded list: each element decoded as `T` and kept as `keep` makes it.
pub(super) struct Keeping<T, U, F> {
    pub(super) list: Vec<U>,
    keep: F,
    element: PhantomData<fn() -> T>,
}

impl<T, U, F> Keeping<T, U, F> {
    pub(super) fn new(keep: F) -> Self {
        Keeping {
            list: Vec::new(),
            keep,
            element: PhantomData,
        }
    }
}

impl<T: DeserializeOwned, U: Send, F: FnMut(T) -> U + Send> Elements for Keeping<T, U, F> {
    fn restart(&mut self) {
        self.list.clear();
    }

    fn element(&mut self, json: &[u8]) -> serde_json::Result<()> {
        self.list.push((self.keep)(serde_json::from_slice(json)?));
        Ok(())
    }
}

/// How much of a body is kept for an excerpt when it is not the JSON expected.
const HEAD: usize = 4096;

/// A 2xx body read as it arrives, each element of its JSON array handed to `elements`.
/// Returns the body's first bytes (for [`super::CyclrError::NotJson`]'s excerpt) and why the
/// body is not a list of the elements expected, if it is not.
///
/// Errors: the network's, while the body is read (the call may be retried).
pub(super) async fn read_elements(
    mut response: reqwest::Response,
    elements: &Mutex<dyn Elements + '_>,
) -> reqwest::Result<(Vec<u8>, Option<serde_json::Error>)> {
    let mut reading = Reading::new(elements);
    while let Some(chunk) = response.chunk().await? {
        if !reading.chunk(&chunk) {
            break;
        }
    }
    Ok(reading.end())
}

/// One body being read into a list: its head, its [`Split`], and the first refusal.
pub(super) struct Reading<'a, 'e> {
    elements: &'a Mutex<dyn Elements + 'e>,
    split: Split,
    head: Vec<u8>,
    refused: Option<serde_json::Error>,
}

impl<'a, 'e> Reading<'a, 'e> {
    /// A new attempt's body: `elements` start again.
    pub(super) fn new(elements: &'a Mutex<dyn Elements + 'e>) -> Self {
        lock(elements).restart();
        Reading {
            elements,
            split: Split::default(),
            head: Vec::new(),
            refused: None,
        }
    }

    /// The next bytes of the body; `false` once the body is refused (the rest need not be
    /// read).
    pub(super) fn chunk(&mut self, chunk: &[u8]) -> bool {
        let room = HEAD.saturating_sub(self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..room]);
        if let Err(error) = self.split.feed(chunk, &mut *lock(self.elements)) {
            self.refused = Some(error);
        }
        self.refused.is_none()
    }

    /// The body's head, and why it is not the list expected, if it is not.
    pub(super) fn end(self) -> (Vec<u8>, Option<serde_json::Error>) {
        let refused = self.refused.or_else(|| self.split.finish().err());
        (self.head, refused)
    }
}

/// Where a [`Split`] is in the body.
#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum Place {
    /// Before the opening `[`.
    #[default]
    Before,
    /// In the array: `depth` brackets and braces deep inside the current element, in a string
    /// or not, after a backslash or not.
    In { depth: u32, string: bool, escaped: bool },
    /// After the closing `]`.
    After,
    /// The body is not an array: it is read whole, for serde_json to say what it is.
    NotArray,
}

/// Splits a JSON array, arriving in chunks, into its elements' bytes. Only the structure is
/// followed here (strings, nesting, the commas between elements); each element is checked by
/// serde_json as it is decoded, and what is around them is checked here.
#[derive(Default)]
struct Split {
    /// Received bytes from the start of the current element (or of the body, when it is not
    /// an array).
    pending: Vec<u8>,
    /// How far `pending` was read.
    scanned: usize,
    place: Place,
    /// Elements handed out so far.
    count: usize,
}

impl Split {
    /// Reads `chunk`, handing `elements` every element it completes.
    ///
    /// Errors: the first element serde_json refuses, or the body's first fault of structure.
    fn feed(&mut self, chunk: &[u8], elements: &mut dyn Elements) -> serde_json::Result<()> {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        let mut at = self.scanned;
        while at < self.pending.len() {
            let byte = self.pending[at];
            match &mut self.place {
                Place::Before if byte.is_ascii_whitespace() => start = at + 1,
                Place::Before if byte == b'[' => {
                    self.place = Place::In {
                        depth: 0,
                        string: false,
                        escaped: false,
                    };
                    start = at + 1;
                }
                Place::Before => {
                    self.place = Place::NotArray;
                    break;
                }
                Place::In { escaped, .. } if *escaped => *escaped = false,
                Place::In { string, escaped, .. } if *string => match byte {
                    b'\\' => *escaped = true,
                    b'"' => *string = false,
                    _ => {}
                },
                Place::In { depth, string, .. } => match byte {
                    b'"' => *string = true,
                    b'{' | b'[' => *depth += 1,
                    b'}' | b']' if *depth > 0 => *depth -= 1,
                    b',' | b']' if *depth == 0 => {
                        let element = self.pending[start..at].trim_ascii();
                        if !element.is_empty() {
                            elements.element(element)?;
                            self.count += 1;
                        } else if byte == b',' || self.count > 0 {
                            // `[,` or `,,` or `,]`: an element missing.
                            return Err(not_a_list(b"[,]"));
                        }
                        if byte == b']' {
                            self.place = Place::After;
                        }
                        start = at + 1;
                    }
                    _ => {}
                },
                Place::After if byte.is_ascii_whitespace() => start = at + 1,
                Place::After => return Err(not_a_list(&[&b"[]"[..], &self.pending[at..]].concat())),
                Place::NotArray => break,
            }
            at += 1;
        }
        if self.place != Place::NotArray {
            self.pending.drain(..start);
            at -= start;
        }
        self.scanned = at;
        Ok(())
    }

    /// The body has ended.
    ///
    /// Errors: why it is not a whole JSON array.
    fn finish(self) -> serde_json::Result<()> {
        match self.place {
            Place::After => Ok(()),
            Place::NotArray | Place::Before => Err(not_a_list(&self.pending)),
            Place::In { .. } => Err(not_a_list(b"[")),
        }
    }
}

/// serde_json's own error for `body` read as a list: syntax or end of input for what is not
/// JSON, invalid type for JSON that is not an array.
fn not_a_list(body: &[u8]) -> serde_json::Error {
    match serde_json::from_slice::<Vec<IgnoredAny>>(body) {
        Err(error) => error,
        Ok(_) => serde::de::Error::custom("not a JSON array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each element's JSON, as handed out.
    #[derive(Default)]
    struct Seen(Vec<String>);

    impl Elements for Seen {
        fn restart(&mut self) {
            self.0.clear();
        }

        fn element(&mut self, json: &[u8]) -> serde_json::Result<()> {
            serde_json::from_slice::<IgnoredAny>(json)?;
            self.0.push(String::from_utf8(json.to_vec()).unwrap());
            Ok(())
        }
    }

    /// `body` fed `size` bytes at a time: the elements, or the error.
    fn split(body: &str, size: usize) -> serde_json::Result<Vec<String>> {
        let mut seen = Seen::default();
        let mut split = Split::default();
        for chunk in body.as_bytes().chunks(size.max(1)) {
            split.feed(chunk, &mut seen)?;
        }
        split.finish()?;
        Ok(seen.0)
    }

    #[test]
    fn elements_come_out_whole_wherever_the_chunks_break() {
        let body = r#" [ {"Id":"a1","Name":"x, ]}\" \\"}, {"Id":"b2","Tags":[1,[2],{"k":"]"}]} ,3 ,"s\"]" ,[] ] "#;
        let expected = [
            r#"{"Id":"a1","Name":"x, ]}\" \\"}"#,
            r#"{"Id":"b2","Tags":[1,[2],{"k":"]"}]}"#,
            "3",
            r#""s\"]""#,
            "[]",
        ];
        for size in 1..=body.len() {
            assert_eq!(split(body, size).unwrap(), expected, "chunks of {size} bytes");
        }
        assert_eq!(split("[]", 1).unwrap(), Vec::<String>::new());
        assert_eq!(split("\n[\n]\n", 2).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn only_the_current_element_is_held() {
        let mut split = Split::default();
        let mut seen = Seen::default();
        split.feed(br#"[{"Id":"a1"},{"Id":"b"#, &mut seen).unwrap();
        assert_eq!(seen.0, [r#"{"Id":"a1"}"#]);
        assert_eq!(
            split.pending, br#"{"Id":"b"#,
            "the element being received, nothing before it"
        );
    }

    #[test]
    fn what_is_not_a_list_is_named_as_serde_json_names_it() {
        let syntax = |body: &str| {
            (1..=body.len().max(1)).all(|size| split(body, size).is_err_and(|e| e.is_syntax() || e.is_eof()))
        };
        for body in [
            "",
            "<html>[1]</html>",
            "[1,,2]",
            "[,]",
            "[1,]",
            "[1] x",
            "[1] []",
            "[1",
            "[{\"a\":",
            "[\"]",
        ] {
            assert!(syntax(body), "{body:?} is not JSON");
        }
        for body in ["{}", "null", "{\"Id\":[1,2]}"] {
            assert!(
                split(body, 3).is_err_and(|e| e.is_data()),
                "{body:?} is JSON but not a list"
            );
        }
        let mut numbers = Keeping::new(|n: u32| n);
        let mut split = Split::default();
        let refused = split.feed(br#"[1, 2, "three", 4]"#, &mut numbers);
        assert!(refused.is_err_and(|e| e.is_data()), "an element of another shape");
        assert_eq!(numbers.list, [1, 2], "the elements before it");
    }
}
