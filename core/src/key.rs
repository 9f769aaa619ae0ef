use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// A validated key naming one resource, such as `vm/1234`.
///
/// A key is a UTF-8 string of 1 to 1024 bytes without NUL or other control characters.
/// It is validated once, when it is built; afterwards it is cheap to clone (a shared,
/// immutable string).
///
/// ```
/// use keyloop_core::Key;
///
/// let key = Key::new("vm/1234").unwrap();
/// assert_eq!(key.as_str(), "vm/1234");
/// assert!(Key::new("").is_err());
/// ```
#[derive(Clone, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Same as the string's hash, so look-ups by `&str` find keys (`Borrow<str>`).
        self.0.hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        // Clones of one key share the string: comparing pointers first spares a cache miss
        // on the hot trigger path, where registry and loop table hold clones of one key.
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Key {}

/// Why a string is not a valid [`Key`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidKey {
    /// The key was the empty string.
    #[error("invalid key: keys must not be empty")]
    Empty,
    /// The key was longer than [`MAX_KEY_BYTES`].
    #[error("invalid key: {len} bytes is longer than the maximum of {max} bytes")]
    TooLong {
        /// Length of the rejected key in bytes.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// The key contained NUL or another control character.
    #[error("invalid key: control character {character:?} at byte {position}")]
    ControlCharacter {
        /// The offending character.
        character: char,
        /// Its byte offset in the key.
        position: usize,
    },
    /// The key bytes were not UTF-8 (only when building from bytes).
    #[error("invalid key: not valid UTF-8")]
    NotUtf8,
}

impl Key {
    /// Validates `key` and builds a [`Key`].
    pub fn new(key: impl AsRef<str>) -> Result<Key, InvalidKey> {
        let key = key.as_ref();
        Self::validate(key)?;
        Ok(Key(Arc::from(key)))
    }

    /// Validates UTF-8 bytes (for backends that store keys as bytes).
    pub fn from_utf8(bytes: &[u8]) -> Result<Key, InvalidKey> {
        let s = std::str::from_utf8(bytes).map_err(|_| InvalidKey::NotUtf8)?;
        Key::new(s)
    }

    fn validate(key: &str) -> Result<(), InvalidKey> {
        if key.is_empty() {
            return Err(InvalidKey::Empty);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(InvalidKey::TooLong {
                len: key.len(),
                max: MAX_KEY_BYTES,
            });
        }
        if let Some((position, character)) = key.char_indices().find(|(_, c)| c.is_control()) {
            return Err(InvalidKey::ControlCharacter {
                character,
                position,
            });
        }
        Ok(())
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Key {
    type Error = InvalidKey;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Key::new(value)
    }
}

impl TryFrom<String> for Key {
    type Error = InvalidKey;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Key::new(value)
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Key::new(s).map_err(serde::de::Error::custom)
    }
}

/// Anything that can name a key: a [`Key`], or a string validated on the way in.
///
/// Lets `engine.trigger("vm/1")` and `engine.trigger(&key)` both work; strings are
/// validated and give [`InvalidKey`] when they are not valid keys.
pub trait IntoKey {
    /// Converts into a validated key.
    fn into_key(self) -> Result<Key, InvalidKey>;
}

impl IntoKey for Key {
    fn into_key(self) -> Result<Key, InvalidKey> {
        Ok(self)
    }
}

impl IntoKey for &Key {
    fn into_key(self) -> Result<Key, InvalidKey> {
        Ok(self.clone())
    }
}

impl IntoKey for &str {
    fn into_key(self) -> Result<Key, InvalidKey> {
        Key::new(self)
    }
}

impl IntoKey for String {
    fn into_key(self) -> Result<Key, InvalidKey> {
        Key::new(self)
    }
}

impl IntoKey for &String {
    fn into_key(self) -> Result<Key, InvalidKey> {
        Key::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_unicode_keys() {
        for k in [
            "a",
            "vm/1234",
            "ключ/🚀",
            "it's \"quoted\" \\ back",
            &"x".repeat(1024),
        ] {
            assert_eq!(Key::new(k).unwrap().as_str(), k);
        }
    }

    #[test]
    fn rejects_bad_keys_with_reason() {
        assert_eq!(Key::new(""), Err(InvalidKey::Empty));
        assert_eq!(
            Key::new("x".repeat(1025)),
            Err(InvalidKey::TooLong {
                len: 1025,
                max: 1024
            })
        );
        assert_eq!(
            Key::new("a\0b"),
            Err(InvalidKey::ControlCharacter {
                character: '\0',
                position: 1
            })
        );
        assert!(matches!(
            Key::new("line\nbreak"),
            Err(InvalidKey::ControlCharacter {
                character: '\n',
                ..
            })
        ));
        assert_eq!(Key::from_utf8(&[0xff, 0xfe]), Err(InvalidKey::NotUtf8));
    }

    #[test]
    fn serde_validates() {
        let k: Key = serde_json::from_str("\"vm/1\"").unwrap();
        assert_eq!(k.as_str(), "vm/1");
        assert!(serde_json::from_str::<Key>("\"\"").is_err());
    }
}
