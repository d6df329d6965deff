//! The batches of native packets the driver fills and the native send
//! stage ([`crate::stage::Stage`]) hands to the kernel in one `sendmmsg`
//! each.

use super::send::{RawSender, SEND_BATCH};

/// Room per packet slot before it grows (an MTU-sized native packet fits).
const SLOT_CAPACITY: usize = 2048;

/// One batch of whole IPv4 or IPv6 packets (the families may mix), each in
/// its own reused slot.
#[derive(Debug)]
pub struct TxBatch {
    slots: Vec<Vec<u8>>,
    len: usize,
}

impl Default for TxBatch {
    fn default() -> Self {
        Self {
            slots: (0..SEND_BATCH)
                .map(|_| Vec::with_capacity(SLOT_CAPACITY))
                .collect(),
            len: 0,
        }
    }
}

impl TxBatch {
    /// Packets in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no packet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether another packet fits.
    pub fn is_full(&self) -> bool {
        self.len == SEND_BATCH
    }

    /// The packets in the batch, in order.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.slots[..self.len].iter().map(Vec::as_slice)
    }

    /// Empties the batch (its slots are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Copies `packet` into the next slot. The caller checks
    /// [`TxBatch::is_full`] first; a full batch ignores the packet.
    pub fn push(&mut self, packet: &[u8]) {
        if let Some(slot) = self.slots.get_mut(self.len) {
            slot.clear();
            slot.extend_from_slice(packet);
            self.len += 1;
        }
    }

    /// Sends the batch with `sender` and empties it. Returns how many
    /// packets were refused ([`RawSender::send_batch`]: a refused packet
    /// is skipped, the ones after it still go out; all of them when the
    /// whole batch was refused).
    fn send_with(&mut self, sender: &mut RawSender) -> usize {
        let n = self.len;
        self.len = 0;
        if n == 0 {
            return 0;
        }
        let mut refs: [&[u8]; SEND_BATCH] = [&[]; SEND_BATCH];
        for (r, s) in refs.iter_mut().zip(&self.slots[..n]) {
            *r = s.as_slice();
        }
        sender.send_counting(&refs[..n])
    }
}

/// Sends `batch` with `sender` on the calling thread and empties it.
/// Returns how many packets were refused (each skipped, the rest sent).
pub fn send_here(batch: &mut TxBatch, sender: &mut RawSender) -> usize {
    batch.send_with(sender)
}
