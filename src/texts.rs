//! Several texts kept in one allocation: the per-resource records the operator holds for
//! every account (the partner's list, the claim index), where a `String` each would cost a
//! 24-byte header and an allocation of its own per text.

/// Up to 8 optional texts, one after the other in one `Box<str>`, with where each ends and
/// which are set (so an empty text and a missing one stay apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Texts<const N: usize> {
    text: Box<str>,
    ends: [u32; N],
    set: u8,
}

impl<const N: usize> Texts<N> {
    /// The texts, in order; `None` for one not set.
    pub fn new(texts: [Option<&str>; N]) -> Self {
        const { assert!(N <= 8, "one bit per text in `set`") };
        let mut text = String::with_capacity(texts.iter().flatten().map(|t| t.len()).sum());
        let mut ends = [0; N];
        let mut set = 0;
        for (i, field) in texts.iter().enumerate() {
            if let Some(field) = field {
                text.push_str(field);
                set |= 1 << i;
            }
            ends[i] = text.len() as u32;
        }
        Texts {
            text: text.into_boxed_str(),
            ends,
            set,
        }
    }

    /// Text `i`, if set.
    pub fn get(&self, i: usize) -> Option<&str> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        (self.set & (1 << i) != 0).then(|| &self.text[start..self.ends[i] as usize])
    }

    /// Text `i`, empty when not set.
    pub fn str(&self, i: usize) -> &str {
        self.get(i).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_text_comes_back_and_an_empty_one_is_not_a_missing_one() {
        let texts = Texts::new([Some("0f3c"), None, Some(""), Some("Acmé")]);
        assert_eq!(
            (0..4).map(|i| texts.get(i)).collect::<Vec<_>>(),
            [Some("0f3c"), None, Some(""), Some("Acmé")]
        );
        assert_eq!(texts.str(1), "");
    }
}
