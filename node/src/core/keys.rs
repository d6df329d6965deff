//! What a change of a group's valid key versions means for the PIT.

use fpn_proto::keys::KeyVersion;

/// The PIT work implied by a group's valid versions going from `old` to
/// `new` (both newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyChange {
    /// A newer current version: flows on older versions renegotiate.
    pub rotated_to: Option<KeyVersion>,
    /// Versions up to this one are gone: flows keyed from them end.
    pub erased_up_to: Option<KeyVersion>,
}

impl KeyChange {
    /// Compares two version lists.
    pub fn between(old: &[KeyVersion], new: &[KeyVersion]) -> Self {
        let rotated_to = match (old.first(), new.first()) {
            (Some(o), Some(n)) if n > o => Some(*n),
            _ => None,
        };
        let erased_up_to = old.iter().filter(|v| !new.contains(v)).max().copied();
        Self {
            rotated_to,
            erased_up_to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[u32]) -> Vec<KeyVersion> {
        list.iter().map(|n| KeyVersion(*n)).collect()
    }

    #[test]
    fn rotation_grace_end_and_leaving() {
        let k = |o: &[u32], n: &[u32]| KeyChange::between(&v(o), &v(n));
        // First keys: nothing to renegotiate.
        assert_eq!(k(&[], &[1]), KeyChange::default());
        // A rotation keeps the old version through its grace.
        assert_eq!(
            k(&[1], &[2, 1]),
            KeyChange {
                rotated_to: Some(KeyVersion(2)),
                erased_up_to: None
            }
        );
        // The grace ends.
        assert_eq!(
            k(&[2, 1], &[2]),
            KeyChange {
                rotated_to: None,
                erased_up_to: Some(KeyVersion(1))
            }
        );
        // Two rotations at once (revocation during a grace).
        assert_eq!(
            k(&[2, 1], &[3, 2]),
            KeyChange {
                rotated_to: Some(KeyVersion(3)),
                erased_up_to: Some(KeyVersion(1))
            }
        );
        // The node left the group.
        assert_eq!(
            k(&[3, 2], &[]),
            KeyChange {
                rotated_to: None,
                erased_up_to: Some(KeyVersion(3))
            }
        );
        assert_eq!(k(&[2], &[2]), KeyChange::default());
    }
}
