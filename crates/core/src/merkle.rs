//! The Merkle tree over the event store, with RFC 9162 (Certificate Transparency v2)
//! semantics: tree hashes, inclusion proofs, consistency proofs and their verification,
//! and the incremental frontier the state machine keeps while it appends events.
//!
//! Leaf `i` (0-based) is event `i + 1`; its leaf input is that event's record hash (the
//! SHA-256 of its canonical bytes), so `leaf_hash = SHA-256(0x00 || record hash)` and an
//! interior node is `SHA-256(0x01 || left || right)`. A checkpoint of size `n` covers
//! events `1..=n`. Proofs are built from hashes of perfect subtrees, which the store keeps
//! by (level, index); this module never does I/O and reads them through [`Nodes`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::Hash;

/// Longest proof accepted or produced: a tree of at most 2^64 leaves has at most 64
/// levels, and a consistency proof at most two hashes per level.
pub const PROOF_HASHES_MAX: usize = 128;

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the older tree ({first} leaves) is larger than the newer one ({second})")]
    OlderTreeLarger { first: u64, second: u64 },
    #[error("the proof has {found} hashes, more than the {max} a proof can have")]
    TooLong { found: usize, max: usize },
    #[error("the proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
    #[error("the proof does not lead to the older tree's root hash")]
    OldRootMismatch,
}

/// `SHA-256(0x00 || record_hash)`: the hash of the leaf for one event.
pub fn leaf_hash(record_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(record_hash);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Hashes of perfect subtrees of one tree.
pub trait Nodes {
    type Error;
    /// The hash of the perfect subtree of `2^level` leaves that starts at leaf
    /// `index << level` (level 0 is a leaf hash).
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The largest power of two strictly below `n` (`n >= 2`): RFC 9162's split point `k`.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start:end])` for `start < end`: one stored node when the range is a perfect
/// aligned subtree, else split as RFC 9162 does. Depth and reads are O(log n).
pub fn range_hash<N: Nodes>(nodes: &N, start: u64, end: u64) -> Result<Hash, N::Error> {
    debug_assert!(start < end);
    let len = end - start;
    if len.is_power_of_two() && start.is_multiple_of(len) {
        let level = len.trailing_zeros();
        return nodes.perfect(level, start >> level);
    }
    let k = split(len);
    let left = range_hash(nodes, start, start + k)?;
    let right = range_hash(nodes, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root hash of the tree of the first `size` leaves.
pub fn root<N: Nodes>(nodes: &N, size: u64) -> Result<Hash, N::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(nodes, 0, size)
}

/// RFC 9162 `PATH(index, D[size])`: the inclusion proof of leaf `index` in the tree of
/// `size` leaves, leaf end first. `index < size`.
pub fn inclusion_proof<N: Nodes>(nodes: &N, index: u64, size: u64) -> Result<Vec<Hash>, N::Error> {
    debug_assert!(index < size);
    let mut out = Vec::new();
    path(nodes, index, 0, size, &mut out)?;
    Ok(out)
}

fn path<N: Nodes>(
    nodes: &N,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), N::Error> {
    let len = end - start;
    if len == 1 {
        return Ok(());
    }
    let k = split(len);
    if m < start + k {
        path(nodes, m, start, start + k, out)?;
        out.push(range_hash(nodes, start + k, end)?);
    } else {
        path(nodes, m, start + k, end, out)?;
        out.push(range_hash(nodes, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 `PROOF(first, D[second])`: the consistency proof that the tree of `first`
/// leaves is a prefix of the tree of `second` leaves. Empty when `first` is 0 or equals
/// `second`. `first <= second`.
pub fn consistency_proof<N: Nodes>(
    nodes: &N,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, N::Error> {
    debug_assert!(first <= second);
    let mut out = Vec::new();
    if first == 0 || first == second {
        return Ok(out);
    }
    subproof(nodes, first, 0, second, true, &mut out)?;
    Ok(out)
}

fn subproof<N: Nodes>(
    nodes: &N,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), N::Error> {
    if m == end {
        if !whole {
            out.push(range_hash(nodes, start, end)?);
        }
        return Ok(());
    }
    let k = split(end - start);
    if m <= start + k {
        subproof(nodes, m, start, start + k, whole, out)?;
        out.push(range_hash(nodes, start + k, end)?);
    } else {
        subproof(nodes, m, start + k, end, false, out)?;
        out.push(range_hash(nodes, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.3.2: checks that `leaf` (a [`leaf_hash`]) is leaf `index` of the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    if proof.len() > PROOF_HASHES_MAX {
        return Err(ProofError::TooLong {
            found: proof.len(),
            max: PROOF_HASHES_MAX,
        });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: checks that the tree of `first` leaves with root `first_root` is a
/// prefix of the tree of `second` leaves with root `second_root`.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::OlderTreeLarger { first, second });
    }
    if proof.len() > PROOF_HASHES_MAX {
        return Err(ProofError::TooLong {
            found: proof.len(),
            max: PROOF_HASHES_MAX,
        });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if first == 0 {
        // Every tree extends the empty one; its root is fixed.
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if *first_root == empty_root() {
            Ok(())
        } else {
            Err(ProofError::OldRootMismatch)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *first_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *second_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of the tree as events are appended: the hash of each perfect subtree
/// that the current size decomposes into, largest (leftmost) first. At most 64 hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontier {
    pub size: u64,
    pub peaks: Vec<Hash>,
}

impl Frontier {
    /// Appends the leaf for the next event and reports every perfect subtree it
    /// completes as `(level, index, hash)`, the leaf itself (level 0) first.
    pub fn push(&mut self, record_hash: &Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let mut h = leaf_hash(record_hash);
        let (mut level, mut index) = (0u32, self.size);
        completed(level, index, &h);
        while index & 1 == 1 {
            let Some(left) = self.peaks.pop() else {
                break;
            };
            h = node_hash(&left, &h);
            level += 1;
            index >>= 1;
            completed(level, index, &h);
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// The root hash of the tree so far.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(*last, |acc, p| node_hash(p, &acc))
    }
}

/// A whole tree in memory, for offline verification of an export and for tests.
#[derive(Clone, Debug, Default)]
pub struct MemTree {
    /// `levels[l][i]`: the perfect subtree of `2^l` leaves starting at leaf `i << l`.
    levels: Vec<Vec<Hash>>,
    frontier: Frontier,
}

impl MemTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the leaf of the event whose record hash is given.
    pub fn push(&mut self, record_hash: &Hash) {
        let levels = &mut self.levels;
        self.frontier.push(record_hash, |level, index, h| {
            let level = level as usize;
            if levels.len() <= level {
                levels.push(Vec::new());
            }
            debug_assert_eq!(levels[level].len() as u64, index);
            levels[level].push(*h);
        });
    }

    pub fn size(&self) -> u64 {
        self.frontier.size
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
}

/// A node a [`MemTree`] does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tree has no perfect subtree at level {level}, index {index}")]
pub struct MissingNode {
    pub level: u32,
    pub index: u64,
}

impl Nodes for MemTree {
    type Error = MissingNode;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.levels.get(level as usize)?.get(i))
            .copied()
            .ok_or(MissingNode { level, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ct_merkle::mem_backed_tree::MemoryBackedTree;
    use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};

    fn record(i: u64) -> Hash {
        Sha256::digest(i.to_be_bytes()).into()
    }

    fn trees(n: u64) -> (MemTree, MemoryBackedTree<Sha256, Hash>) {
        let mut ours = MemTree::new();
        let mut theirs = MemoryBackedTree::<Sha256, Hash>::new();
        for i in 0..n {
            ours.push(&record(i));
            theirs.push(record(i));
        }
        (ours, theirs)
    }

    fn flat(p: &[Hash]) -> Vec<u8> {
        p.concat()
    }

    /// The empty tree's root is SHA-256 of nothing (RFC 9162 §2.1.1).
    #[test]
    fn empty_root_is_the_hash_of_nothing() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// Roots and both kinds of proof agree byte for byte with an independent RFC 6962 /
    /// 9162 implementation (the `ct-merkle` crate) for every size up to 70 and every
    /// index or older size, and each side verifies the other's proofs.
    #[test]
    fn agrees_with_an_independent_implementation() {
        for n in 1..=70u64 {
            let (ours, theirs) = trees(n);
            let root = ours.root();
            assert_eq!(
                root.as_slice(),
                theirs.root().as_bytes().as_slice(),
                "root {n}"
            );
            assert_eq!(
                self::root(&ours, n).expect("stored"),
                root,
                "range root {n}"
            );
            for i in 0..n {
                let p = inclusion_proof(&ours, i, n).expect("stored");
                let q = theirs.prove_inclusion(i as usize);
                assert_eq!(flat(&p), q.as_bytes(), "inclusion {i} of {n}");
                verify_inclusion(&leaf_hash(&record(i)), i, n, &p, &root).expect("verifies");
                theirs
                    .root()
                    .verify_inclusion(&record(i), i, &InclusionProof::from_bytes(flat(&p)))
                    .expect("ct-merkle accepts ours");
            }
            for m in 1..n {
                let (old, _) = trees(m);
                let p = consistency_proof(&ours, m, n).expect("stored");
                let q = theirs.prove_consistency((n - m) as usize);
                assert_eq!(flat(&p), q.as_bytes(), "consistency {m} -> {n}");
                verify_consistency(m, n, &old.root(), &root, &p).expect("verifies");
                let old_root = RootHash::<Sha256>::new(old.root().into(), m);
                theirs
                    .root()
                    .verify_consistency(
                        &old_root,
                        &ConsistencyProof::try_from_bytes(flat(&p)).expect("length"),
                    )
                    .expect("ct-merkle accepts ours");
            }
        }
    }

    /// The root of any prefix computed from stored nodes equals the root the frontier had
    /// at that size.
    #[test]
    fn prefix_roots_match_the_frontier_history() {
        let mut t = MemTree::new();
        let mut history = vec![empty_root()];
        for i in 0..300 {
            t.push(&record(i));
            history.push(t.root());
        }
        for (m, want) in history.iter().enumerate() {
            assert_eq!(&root(&t, m as u64).expect("stored"), want, "size {m}");
        }
    }

    /// Flipping any bit of any proof hash, dropping or adding a hash, or claiming another
    /// index, size or root makes verification fail.
    #[test]
    fn forged_inclusion_proofs_fail() {
        let n = 37;
        let (t, _) = trees(n);
        let root = t.root();
        for i in [0, 1, 17, 31, 32, 36] {
            let leaf = leaf_hash(&record(i));
            let p = inclusion_proof(&t, i, n).expect("stored");
            for j in 0..p.len() {
                for bit in [0usize, 77, 255] {
                    let mut q = p.clone();
                    q[j][bit / 8] ^= 1 << (bit % 8);
                    assert!(verify_inclusion(&leaf, i, n, &q, &root).is_err());
                }
                let mut shorter = p.clone();
                shorter.remove(j);
                assert!(verify_inclusion(&leaf, i, n, &shorter, &root).is_err());
            }
            let mut longer = p.clone();
            longer.push(root);
            assert!(verify_inclusion(&leaf, i, n, &longer, &root).is_err());
            let other = leaf_hash(&record(i + 1));
            assert!(verify_inclusion(&other, i, n, &p, &root).is_err());
            assert!(verify_inclusion(&leaf, (i + 1) % n, n, &p, &root).is_err());
            // (Another size may accept the same path, as RFC 9162 notes; a checkpoint signs
            // the size together with the root, so the size is never taken from the proof.)
            assert!(verify_inclusion(&leaf, i, n, &p, &empty_root()).is_err());
            assert!(verify_inclusion(&leaf, n, n, &p, &root).is_err());
        }
    }

    #[test]
    fn forged_consistency_proofs_fail() {
        let n = 45;
        let (t, _) = trees(n);
        let root = t.root();
        for m in [1u64, 2, 3, 8, 16, 20, 32, 44] {
            let old = trees(m).0.root();
            let p = consistency_proof(&t, m, n).expect("stored");
            verify_consistency(m, n, &old, &root, &p).expect("genuine");
            for j in 0..p.len() {
                let mut q = p.clone();
                q[j][31] ^= 0x80;
                assert!(
                    verify_consistency(m, n, &old, &root, &q).is_err(),
                    "{m} flip {j}"
                );
                let mut shorter = p.clone();
                shorter.remove(j);
                assert!(verify_consistency(m, n, &old, &root, &shorter).is_err());
            }
            let mut forged_old = old;
            forged_old[0] ^= 1;
            assert!(verify_consistency(m, n, &forged_old, &root, &p).is_err());
            assert!(verify_consistency(m, n, &old, &empty_root(), &p).is_err());
            assert!(verify_consistency(m + 1, n, &old, &root, &p).is_err());
            assert!(verify_consistency(n, m, &root, &old, &p).is_err());
        }
        // A tree whose first m leaves differ is not consistent with the genuine old root.
        let mut other = MemTree::new();
        for i in 0..n {
            other.push(&record(if i == 3 { 1000 } else { i }));
        }
        let p = consistency_proof(&other, 10, n).expect("stored");
        let old = trees(10).0.root();
        assert!(verify_consistency(10, n, &old, &other.root(), &p).is_err());
        // Equal sizes need equal roots and no proof; the empty tree is a prefix of any.
        assert!(verify_consistency(n, n, &root, &root, &[]).is_ok());
        assert!(verify_consistency(n, n, &old, &root, &[]).is_err());
        assert!(verify_consistency(0, n, &empty_root(), &root, &[]).is_ok());
    }

    /// Every completed subtree is reported once, in order, the leaf first.
    #[test]
    fn frontier_reports_each_completed_subtree() {
        let mut f = Frontier::default();
        let mut seen = Vec::new();
        for i in 0..8 {
            f.push(&record(i), |level, index, _| seen.push((level, index)));
        }
        assert_eq!(
            seen,
            vec![
                (0, 0),
                (0, 1),
                (1, 0),
                (0, 2),
                (0, 3),
                (1, 1),
                (2, 0),
                (0, 4),
                (0, 5),
                (1, 2),
                (0, 6),
                (0, 7),
                (1, 3),
                (2, 1),
                (3, 0)
            ]
        );
        assert_eq!(f.peaks.len(), 1);
    }
}
