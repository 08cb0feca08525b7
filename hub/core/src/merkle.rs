//! The RFC 6962 / RFC 9162 Merkle tree over the exchange log.
//!
//! Leaves are `SHA-256(0x00 || entry)` ([`crate::log::leaf_hash`]); interior
//! nodes are `SHA-256(0x01 || left || right)`; the empty tree's root is
//! `SHA-256("")`. [`Frontier`] keeps the tree incrementally (O(log n) per
//! append, no recomputation); the proof builders follow RFC 9162 sections
//! 2.1.3.1 and 2.1.4.1, and the verifiers sections 2.1.3.2 and 2.1.4.2
//! exactly: a proof must be consumed exactly, and an older size larger than
//! a newer one is refused.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use crate::hash::{Hash, sha256};

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    let mut buf = Vec::with_capacity(1 + left.len() + right.len());
    buf.push(1u8);
    buf.extend_from_slice(left);
    buf.extend_from_slice(right);
    sha256(&buf)
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    sha256(b"")
}

/// The largest power of two strictly less than `n` (n > 1).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The root over `leaves` (leaf hashes), computed from scratch.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = usize::try_from(split(n as u64)).unwrap_or(0);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The inclusion proof of leaf `index` in the tree over `leaves`
/// (RFC 9162 2.1.3.1), or `None` if `index` is out of range.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Option<Vec<Hash>> {
    let i = usize::try_from(index).ok()?;
    (i < leaves.len()).then(|| path(i, 0, leaves.len(), &|lo, hi| root(&leaves[lo..hi])))
}

/// The consistency proof from size `old` to the tree over `leaves`
/// (RFC 9162 2.1.4.1), or `None` unless `0 < old <= leaves.len()`.
pub fn consistency_proof(leaves: &[Hash], old: u64) -> Option<Vec<Hash>> {
    let m = usize::try_from(old).ok()?;
    (m > 0 && m <= leaves.len())
        .then(|| subproof(m, 0, leaves.len(), true, &|lo, hi| root(&leaves[lo..hi])))
}

/// The root of leaves `lo..hi`, however it is found.
type RangeRoot<'a> = &'a dyn Fn(usize, usize) -> Hash;

/// PATH(m, D[lo..hi]) of RFC 9162 2.1.3.1.
fn path(m: usize, lo: usize, hi: usize, range_root: RangeRoot<'_>) -> Vec<Hash> {
    let n = hi - lo;
    if n <= 1 {
        return Vec::new();
    }
    let k = usize::try_from(split(n as u64)).unwrap_or(0);
    if m < k {
        let mut p = path(m, lo, lo + k, range_root);
        p.push(range_root(lo + k, hi));
        p
    } else {
        let mut p = path(m - k, lo + k, hi, range_root);
        p.push(range_root(lo, lo + k));
        p
    }
}

/// SUBPROOF(m, D[lo..hi], b) of RFC 9162 2.1.4.1.
fn subproof(
    m: usize,
    lo: usize,
    hi: usize,
    complete: bool,
    range_root: RangeRoot<'_>,
) -> Vec<Hash> {
    let n = hi - lo;
    if m == n {
        return if complete {
            Vec::new()
        } else {
            vec![range_root(lo, hi)]
        };
    }
    let k = usize::try_from(split(n as u64)).unwrap_or(0);
    if m <= k {
        let mut p = subproof(m, lo, lo + k, complete, range_root);
        p.push(range_root(lo + k, hi));
        p
    } else {
        let mut p = subproof(m - k, lo + k, hi, false, range_root);
        p.push(range_root(lo, lo + k));
        p
    }
}

/// Every perfect subtree's root, level by level, so that any proof costs
/// O(log^2 n) hashes instead of O(n): `levels[h][j]` is the root of leaves
/// `j·2^h .. (j+1)·2^h`. About two hashes of memory per leaf.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many leaves the tree has.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Append one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut h = 0;
        loop {
            if self.levels.len() == h {
                self.levels.push(Vec::new());
            }
            self.levels[h].push(node);
            let len = self.levels[h].len();
            if len % 2 == 1 {
                break;
            }
            node = node_hash(&self.levels[h][len - 2], &self.levels[h][len - 1]);
            h += 1;
        }
    }

    /// The root of leaves `lo..hi` (a range the MTH recursion produces).
    fn range_root(&self, lo: usize, hi: usize) -> Hash {
        let n = hi - lo;
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            let h = n.trailing_zeros() as usize;
            if let Some(hash) = self.levels.get(h).and_then(|l| l.get(lo >> h)) {
                return *hash;
            }
        }
        let k = usize::try_from(split(n as u64)).unwrap_or(0);
        node_hash(&self.range_root(lo, lo + k), &self.range_root(lo + k, hi))
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        let n = usize::try_from(size)
            .ok()
            .filter(|n| *n as u64 <= self.size())?;
        Some(self.range_root(0, n))
    }

    /// The inclusion proof of leaf `index` in the tree of `size`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        let (i, n) = (usize::try_from(index).ok()?, usize::try_from(size).ok()?);
        (i < n && size <= self.size()).then(|| path(i, 0, n, &|lo, hi| self.range_root(lo, hi)))
    }

    /// Every leaf's inclusion proof in the tree of `size`, in leaf order.
    /// A proof's only hashes not already in the levels are the roots of
    /// ranges ending at `size` (the tree's right edge), the same few for
    /// every leaf: they are computed once here, not once per proof.
    pub fn inclusion_proofs(&self, size: u64) -> Option<Vec<Vec<Hash>>> {
        let n = usize::try_from(size)
            .ok()
            .filter(|n| *n as u64 <= self.size())?;
        // The ranges lo..n the recursion reaches, outermost first, each
        // split into a perfect left half lo..lo + k and the next range.
        let mut edge = Vec::new();
        let mut lo = 0;
        while n - lo > 1 {
            let k = usize::try_from(split((n - lo) as u64)).unwrap_or(0);
            edge.push((lo, k));
            lo += k;
        }
        // Their roots, innermost first (the innermost range is one leaf).
        let mut roots: Vec<(usize, Hash)> = Vec::with_capacity(edge.len());
        if n > 0 {
            let mut right = self.range_root(lo, n);
            for &(lo, k) in edge.iter().rev() {
                right = node_hash(&self.range_root(lo, lo + k), &right);
                roots.push((lo, right));
            }
        }
        let range_root = |lo: usize, hi: usize| {
            roots
                .iter()
                .find(|(at, _)| hi == n && *at == lo)
                .map_or_else(|| self.range_root(lo, hi), |(_, root)| *root)
        };
        Some((0..n).map(|i| path(i, 0, n, &range_root)).collect())
    }

    /// The consistency proof from size `old` to size `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        let (m, n) = (usize::try_from(old).ok()?, usize::try_from(new).ok()?);
        (m > 0 && m <= n && new <= self.size())
            .then(|| subproof(m, 0, n, true, &|lo, hi| self.range_root(lo, hi)))
    }
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("older size {old} is larger than newer size {new}")]
    SizesReversed { old: u64, new: u64 },
    #[error("a consistency proof from the empty tree proves nothing")]
    EmptyOldTree,
    #[error("a hash is {0} bytes, not 32")]
    BadHashLength(usize),
    #[error("the proof has {0} elements too many")]
    TooLong(usize),
    #[error("the proof is too short")]
    TooShort,
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
}

fn hash32(h: &[u8]) -> Result<(), ProofError> {
    if h.len() == 32 {
        Ok(())
    } else {
        Err(ProofError::BadHashLength(h.len()))
    }
}

/// RFC 9162 2.1.3.2: is `leaf` at `index` in the tree of `size` with `root`?
pub fn verify_inclusion<P: AsRef<[u8]>>(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[P],
    root: &[u8],
) -> Result<(), ProofError> {
    if root_from_inclusion(index, size, leaf, proof)? != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The root of the tree of `size` that the inclusion `proof` of `leaf` at
/// `index` leads to (RFC 9162 2.1.3.2 up to the last comparison); the
/// proof must be consumed exactly.
pub fn root_from_inclusion<P: AsRef<[u8]>>(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[P],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    hash32(leaf)?;
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = [0u8; 32];
    r.copy_from_slice(leaf);
    for (used, p) in proof.iter().enumerate() {
        let p = p.as_ref();
        hash32(p)?;
        if snode == 0 {
            return Err(ProofError::TooLong(proof.len() - used));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::TooShort);
    }
    Ok(r)
}

/// RFC 9162 2.1.4.2: is the tree of `size2` with `root2` an extension of the
/// tree of `size1` with `root1`?
pub fn verify_consistency<P: AsRef<[u8]>>(
    size1: u64,
    size2: u64,
    root1: &[u8],
    root2: &[u8],
    proof: &[P],
) -> Result<(), ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizesReversed {
            old: size1,
            new: size2,
        });
    }
    if size1 == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::TooLong(proof.len()));
        }
        return if root1 == root2 {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    let Some((first, rest)) = proof.split_first() else {
        return Err(ProofError::TooShort);
    };
    for p in proof {
        hash32(p.as_ref())?;
    }
    // When size1 is a power of two, its root is the first node of the path.
    let power_of_two = size1.is_power_of_two();
    let (start, rest): (&[u8], &[P]) = if power_of_two {
        (root1, proof)
    } else {
        (first.as_ref(), rest)
    };
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = start.to_vec();
    let mut sr = start.to_vec();
    for (used, c) in rest.iter().enumerate() {
        let c = c.as_ref();
        if snode == 0 {
            return Err(ProofError::TooLong(rest.len() - used));
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr).to_vec();
            sr = node_hash(c, &sr).to_vec();
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c).to_vec();
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::TooShort);
    }
    if fr != root1 || sr != root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Hashes per tile (C2SP tlog-tiles).
pub const TILE_WIDTH: u64 = 256;

/// The leaves one hash of a level-`level` tile covers: 256^level.
pub fn tile_span(level: u8) -> Option<u64> {
    TILE_WIDTH.checked_pow(u32::from(level))
}

/// A block pushed where the tree does not end at a block boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a tree of {0} leaves does not end at a 256-leaf block boundary")]
pub struct Unaligned(pub u64);

/// The right edge of the tree: the roots of its maximal perfect subtrees,
/// largest first. Appending a leaf costs O(log n) hashes at most, and the
/// root is folded from at most log n nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, hash), heights strictly decreasing.
    nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many leaves the tree has.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_keeping(leaf, &mut SubtreeRoots::default());
    }

    /// Append one leaf hash, and keep in `roots` the subtree roots this
    /// completes.
    pub fn push_keeping(&mut self, leaf: Hash, roots: &mut SubtreeRoots) {
        self.push_node(0, leaf, roots);
    }

    /// Append a whole 256-leaf block by its root (what
    /// [`SubtreeRoots::level`]`(1)` keeps), as if its leaves had been
    /// pushed one by one, and keep in `roots` what it completes (the block
    /// itself included). The tree must end at a block boundary.
    pub fn push_block(&mut self, root: Hash, roots: &mut SubtreeRoots) -> Result<(), Unaligned> {
        if !self.size.is_multiple_of(BLOCK) {
            return Err(Unaligned(self.size));
        }
        roots.keep(BLOCK_HEIGHT, root);
        self.push_node(BLOCK_HEIGHT, root, roots);
        Ok(())
    }

    fn push_node(&mut self, height: u32, hash: Hash, roots: &mut SubtreeRoots) {
        let mut node = (height, hash);
        while let Some(&(height, left)) = self.nodes.last() {
            if height != node.0 {
                break;
            }
            self.nodes.pop();
            node = (height + 1, node_hash(&left, &node.1));
            roots.keep(node.0, node.1);
        }
        self.nodes.push(node);
        self.size += 1 << height;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = iter.next() else {
            return empty_root();
        };
        for (_, left) in iter {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Leaves per block: the smallest subtree whose root is kept.
const BLOCK: u64 = TILE_WIDTH;
/// The height of a block's subtree.
const BLOCK_HEIGHT: u32 = 8;

/// The roots of the log's complete subtrees of 256 leaves and every larger
/// power of two, in order, kept as [`Frontier::push_keeping`] forms them:
/// 1/128th of the leaves' hashes. With them, any perfect subtree of 256
/// leaves or more is one lookup, and a proof or a tile needs no leaves but
/// those of the (at most three) 256-leaf blocks that [`inclusion_blocks`]
/// or [`consistency_blocks`] name, so serving or checking it does not read
/// the log from its start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubtreeRoots {
    /// `by_height[i][j]`: the root of the `j`th complete subtree of height
    /// `BLOCK_HEIGHT + i` (leaves `j·2^h .. (j+1)·2^h`).
    by_height: Vec<Vec<Hash>>,
}

/// Leaf hashes of 256-leaf blocks, by block number (leaf index / 256); the
/// last block of a tree may be shorter.
pub type Blocks = BTreeMap<u64, Vec<Hash>>;

/// Where [`SubtreeRoots`] takes the roots of subtrees smaller than a block.
pub trait BlockLeaves {
    /// The root of the perfect subtree of `2^height` leaves (`height` below
    /// 8) from leaf `first` (a multiple of `2^height`); `None` if its leaves
    /// are not here.
    fn sub_block_root(&self, first: u64, height: u32) -> Option<Hash>;
}

/// Hashed from the leaves at each call: a proof needs a block's leaves
/// once.
impl BlockLeaves for Blocks {
    fn sub_block_root(&self, first: u64, height: u32) -> Option<Hash> {
        let leaves = self.get(&(first / BLOCK))?;
        let from = usize::try_from(first % BLOCK).ok()?;
        leaves.get(from..from + (1usize << height)).map(root)
    }
}

/// Blocks with every level of their subtrees, completed as leaves are
/// pushed (one hash per leaf): a sub-block subtree's root is a lookup. For
/// many proofs over the same blocks, as between consecutive checkpoints a
/// few entries apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTrees {
    /// By block number: `levels[h][j]`, the root of the `j`th perfect
    /// subtree of `2^h` leaves in the block (`levels[0]`: the leaves).
    blocks: BTreeMap<u64, Vec<Vec<Hash>>>,
}

impl BlockTrees {
    /// Append leaf `index`, the next of its block.
    pub fn push(&mut self, index: u64, leaf: Hash) {
        let levels = self.blocks.entry(index / BLOCK).or_default();
        let mut node = leaf;
        for h in 0..=BLOCK_HEIGHT as usize {
            if levels.len() <= h {
                levels.push(Vec::new());
            }
            let Some(level) = levels.get_mut(h) else {
                return;
            };
            level.push(node);
            if level.len() % 2 == 1 || h == BLOCK_HEIGHT as usize {
                return;
            }
            node = node_hash(&level[level.len() - 2], &node);
        }
    }

    /// Leaf `index`, if its block is here.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let levels = self.blocks.get(&(index / BLOCK))?;
        levels
            .first()?
            .get(usize::try_from(index % BLOCK).ok()?)
            .copied()
    }

    /// Forget block `block`.
    pub fn remove(&mut self, block: u64) {
        self.blocks.remove(&block);
    }

    /// Keep only the blocks `keep` says so of.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.blocks.retain(|block, _| keep(*block));
    }
}

impl BlockLeaves for BlockTrees {
    fn sub_block_root(&self, first: u64, height: u32) -> Option<Hash> {
        let levels = self.blocks.get(&(first / BLOCK))?;
        let level = levels.get(usize::try_from(height).ok()?)?;
        level
            .get(usize::try_from((first % BLOCK) >> height).ok()?)
            .copied()
    }
}

impl SubtreeRoots {
    fn keep(&mut self, height: u32, root: Hash) {
        let Some(i) = height
            .checked_sub(BLOCK_HEIGHT)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        if self.by_height.len() <= i {
            self.by_height.resize_with(i + 1, Vec::new);
        }
        if let Some(roots) = self.by_height.get_mut(i) {
            roots.push(root);
        }
    }

    /// The kept roots of tlog-tiles level `level` (1 and up): the `j`th
    /// covers leaves `j·256^level .. (j+1)·256^level`.
    pub fn level(&self, level: u8) -> &[Hash] {
        usize::from(level)
            .checked_sub(1)
            .and_then(|l| self.by_height.get(l * 8))
            .map_or(&[], Vec::as_slice)
    }

    /// The root of the perfect subtree of `2^height` leaves from leaf
    /// `first` (a multiple of `2^height`), from the kept roots or, below
    /// 256 leaves, from `blocks`; `None` if what it needs is missing.
    pub fn subtree_root(&self, first: u64, height: u32, blocks: &impl BlockLeaves) -> Option<Hash> {
        if height >= BLOCK_HEIGHT {
            let roots = self
                .by_height
                .get(usize::try_from(height - BLOCK_HEIGHT).ok()?)?;
            return roots
                .get(usize::try_from(first.checked_shr(height)?).ok()?)
                .copied();
        }
        blocks.sub_block_root(first, height)
    }

    /// The root of leaves `lo..hi` as RFC 9162's MTH splits them: a fold of
    /// the perfect subtrees that make them up.
    fn range_root(&self, lo: u64, hi: u64, blocks: &impl BlockLeaves) -> Option<Hash> {
        let mut parts = perfect_subtrees(lo, hi).into_iter().rev();
        let (first, height) = parts.next()?;
        let mut acc = self.subtree_root(first, height, blocks)?;
        for (first, height) in parts {
            acc = node_hash(&self.subtree_root(first, height, blocks)?, &acc);
        }
        Some(acc)
    }

    /// Run a proof builder over these roots and `blocks`: `None` if it
    /// needed what they lack.
    fn prove(
        &self,
        blocks: &impl BlockLeaves,
        build: impl FnOnce(RangeRoot<'_>) -> Vec<Hash>,
    ) -> Option<Vec<Hash>> {
        let missing = Cell::new(false);
        let proof = build(&|lo, hi| {
            self.range_root(lo as u64, hi as u64, blocks)
                .unwrap_or_else(|| {
                    missing.set(true);
                    [0; 32]
                })
        });
        (!missing.get()).then_some(proof)
    }

    /// The inclusion proof of leaf `index` in the tree of `size` (RFC 9162
    /// 2.1.3.1), given the leaves of [`inclusion_blocks`]`(index, size)`.
    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
        blocks: &impl BlockLeaves,
    ) -> Option<Vec<Hash>> {
        let (i, n) = (usize::try_from(index).ok()?, usize::try_from(size).ok()?);
        if i >= n {
            return None;
        }
        self.prove(blocks, |range_root| path(i, 0, n, range_root))
    }

    /// The consistency proof from size `old` to size `new` (RFC 9162
    /// 2.1.4.1), given the leaves of [`consistency_blocks`]`(old, new)`.
    pub fn consistency_proof(
        &self,
        old: u64,
        new: u64,
        blocks: &impl BlockLeaves,
    ) -> Option<Vec<Hash>> {
        let (m, n) = (usize::try_from(old).ok()?, usize::try_from(new).ok()?);
        if m == 0 || m > n {
            return None;
        }
        self.prove(blocks, |range_root| subproof(m, 0, n, true, range_root))
    }
}

/// The perfect subtrees `(first leaf, height)` that make up leaves `lo..hi`
/// as MTH splits them, largest first.
fn perfect_subtrees(mut lo: u64, hi: u64) -> Vec<(u64, u32)> {
    let mut parts = Vec::new();
    while lo < hi {
        let n = hi - lo;
        let k = if n.is_power_of_two() { n } else { split(n) };
        parts.push((lo, k.trailing_zeros()));
        lo += k;
    }
    parts
}

/// The blocks whose leaves the ranges a proof builder asks for need.
fn blocks_of(build: impl FnOnce(RangeRoot<'_>) -> Vec<Hash>) -> BTreeSet<u64> {
    let blocks = RefCell::new(BTreeSet::new());
    build(&|lo, hi| {
        for (first, height) in perfect_subtrees(lo as u64, hi as u64) {
            if height < BLOCK_HEIGHT {
                blocks.borrow_mut().insert(first / BLOCK);
            }
        }
        [0; 32]
    });
    blocks.into_inner()
}

/// The 256-leaf blocks whose leaves the inclusion proof of `index` in the
/// tree of `size` needs besides [`SubtreeRoots`]: at most two.
pub fn inclusion_blocks(index: u64, size: u64) -> BTreeSet<u64> {
    match (usize::try_from(index), usize::try_from(size)) {
        (Ok(i), Ok(n)) if i < n => blocks_of(|range_root| path(i, 0, n, range_root)),
        _ => BTreeSet::new(),
    }
}

/// The 256-leaf blocks whose leaves the consistency proof from `old` to
/// `new` needs besides [`SubtreeRoots`]: at most three.
pub fn consistency_blocks(old: u64, new: u64) -> BTreeSet<u64> {
    match (usize::try_from(old), usize::try_from(new)) {
        (Ok(m), Ok(n)) if m > 0 && m <= n => {
            blocks_of(|range_root| subproof(m, 0, n, true, range_root))
        }
        _ => BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| crate::log::leaf_hash(format!("entry {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn block_trees_give_the_sub_block_roots_and_proofs_the_leaves_give() {
        // Two whole blocks and a partial one.
        let all = leaves(600);
        let mut frontier = Frontier::new();
        let mut roots = SubtreeRoots::default();
        let mut trees = BlockTrees::default();
        let mut blocks = Blocks::new();
        for (i, leaf) in all.iter().enumerate() {
            frontier.push_keeping(*leaf, &mut roots);
            trees.push(i as u64, *leaf);
            blocks.entry(i as u64 / BLOCK).or_default().push(*leaf);
        }
        for height in 0..BLOCK_HEIGHT {
            for first in (0..600u64).step_by(1 << height) {
                assert_eq!(
                    trees.sub_block_root(first, height),
                    blocks.sub_block_root(first, height),
                    "{first}, {height}"
                );
            }
        }
        assert_eq!(trees.leaf(599), Some(all[599]));
        assert_eq!(trees.leaf(600), None);
        for (old, new) in [(1, 600), (255, 256), (300, 301), (513, 599), (256, 600)] {
            let proof = roots.consistency_proof(old, new, &trees);
            assert!(proof.is_some(), "{old} -> {new}");
            assert_eq!(proof, roots.consistency_proof(old, new, &blocks));
            assert_eq!(
                proof.as_deref(),
                consistency_proof(&all[..new as usize], old).as_deref()
            );
        }
        for index in [0, 255, 256, 511, 599] {
            let proof = roots.inclusion_proof(index, 600, &trees);
            assert_eq!(
                proof.as_deref(),
                inclusion_proof(&all, index).as_deref(),
                "{index}"
            );
        }
        trees.remove(1);
        assert_eq!(trees.sub_block_root(256, 0), None);
    }

    fn tree_of(leaves: &[Hash]) -> Tree {
        let mut tree = Tree::new();
        for leaf in leaves {
            tree.push(*leaf);
        }
        tree
    }

    /// The kept roots of `leaves` and every block of them.
    fn kept(leaves: &[Hash]) -> (SubtreeRoots, Blocks) {
        let mut roots = SubtreeRoots::default();
        let mut f = Frontier::new();
        for leaf in leaves {
            f.push_keeping(*leaf, &mut roots);
        }
        let blocks = leaves
            .chunks(BLOCK as usize)
            .enumerate()
            .map(|(b, chunk)| (b as u64, chunk.to_vec()))
            .collect();
        (roots, blocks)
    }

    /// Only the blocks `wanted` of `all`.
    fn only(all: &Blocks, wanted: &BTreeSet<u64>) -> Blocks {
        wanted
            .iter()
            .filter_map(|b| all.get(b).map(|l| (*b, l.clone())))
            .collect()
    }

    #[test]
    fn proofs_from_kept_roots_and_named_blocks_are_the_proofs_from_all_leaves() {
        let all = leaves(1_300);
        let (roots, blocks) = kept(&all);
        assert_eq!(roots.level(1).len(), 5);
        assert_eq!(roots.level(1)[2], root(&all[512..768]));
        assert!(roots.level(2).is_empty());
        for size in [1, 2, 255, 256, 257, 511, 512, 513, 769, 1_024, 1_299, 1_300] {
            let leaves = &all[..size];
            for index in (0..size).step_by(37).chain([size - 1]) {
                let wanted = inclusion_blocks(index as u64, size as u64);
                assert!(wanted.len() <= 2, "{wanted:?}");
                assert_eq!(
                    roots.inclusion_proof(index as u64, size as u64, &only(&blocks, &wanted)),
                    inclusion_proof(leaves, index as u64),
                    "inclusion of {index} in {size}"
                );
            }
            for old in (1..=size).step_by(41).chain([size]) {
                let wanted = consistency_blocks(old as u64, size as u64);
                assert!(wanted.len() <= 3, "{wanted:?}");
                assert_eq!(
                    roots.consistency_proof(old as u64, size as u64, &only(&blocks, &wanted)),
                    consistency_proof(leaves, old as u64),
                    "consistency from {old} to {size}"
                );
            }
        }
        // A block left out is missed, not guessed.
        assert_eq!(roots.inclusion_proof(3, 1_300, &Blocks::new()), None);
    }

    #[test]
    fn roots_of_the_second_level_serve_large_subtrees() {
        let all = leaves(66_000);
        let (roots, blocks) = kept(&all);
        assert_eq!(roots.level(1).len(), 257);
        assert_eq!(roots.level(2), [root(&all[..65_536])]);
        let tree = tree_of(&all);
        for (index, size) in [
            (3, 66_000),
            (65_535, 65_537),
            (65_999, 66_000),
            (40_000, 65_536),
        ] {
            let wanted = inclusion_blocks(index, size);
            assert_eq!(
                roots.inclusion_proof(index, size, &only(&blocks, &wanted)),
                tree.inclusion_proof(index, size),
                "inclusion of {index} in {size}"
            );
        }
        let wanted = consistency_blocks(65_000, 66_000);
        assert_eq!(
            roots.consistency_proof(65_000, 66_000, &only(&blocks, &wanted)),
            tree.consistency_proof(65_000, 66_000)
        );
    }

    #[test]
    fn blocks_pushed_by_their_roots_leave_the_tree_their_leaves_would() {
        let all = leaves(66_000);
        let (by_leaf, _) = kept(&all);
        let mut by_leaf_frontier = Frontier::new();
        all.iter().for_each(|l| by_leaf_frontier.push(*l));
        let mut frontier = Frontier::new();
        let mut roots = SubtreeRoots::default();
        for block in by_leaf.level(1) {
            frontier.push_block(*block, &mut roots).unwrap();
        }
        for leaf in &all[by_leaf.level(1).len() * 256..] {
            frontier.push_keeping(*leaf, &mut roots);
        }
        assert_eq!(frontier, by_leaf_frontier);
        assert_eq!(roots, by_leaf);
        assert_eq!(
            frontier.push_block([7; 32], &mut roots),
            Err(Unaligned(66_000))
        );
        assert_eq!(
            frontier, by_leaf_frontier,
            "a refused block changes nothing"
        );
    }

    /// What `hub audit verify` relies on to hold only two blocks' leaves:
    /// a consistency proof needs those of the block where the old tree
    /// ends and of the block holding the new tree's last leaf, no other.
    #[test]
    fn a_consistency_proof_needs_only_the_blocks_at_both_ends() {
        let pairs = (1..=600u64)
            .flat_map(|new| (1..=new).map(move |old| (old, new)))
            .chain([(1, 70_000), (65_535, 65_537), (300, 66_000), (257, 600_000)]);
        for (old, new) in pairs {
            let allowed = [old / BLOCK, (new - 1) / BLOCK];
            assert!(
                consistency_blocks(old, new)
                    .iter()
                    .all(|b| allowed.contains(b)),
                "{old} -> {new}: {:?}",
                consistency_blocks(old, new)
            );
        }
    }

    #[test]
    fn frontier_matches_the_recursive_root() {
        let all = leaves(130);
        let mut f = Frontier::new();
        assert_eq!(f.root(), empty_root());
        for n in 1..=all.len() {
            f.push(all[n - 1]);
            assert_eq!(f.root(), root(&all[..n]), "size {n}");
        }
    }

    #[test]
    fn every_generated_proof_verifies_and_none_verifies_elsewhere() {
        let all = leaves(40);
        for n in 1..=all.len() {
            let tree = &all[..n];
            let r = root(tree);
            for i in 0..n {
                let proof = inclusion_proof(tree, i as u64).unwrap();
                verify_inclusion(i as u64, n as u64, &tree[i], &proof, &r).unwrap();
                if n > 1 {
                    let other = (i + 1) % n;
                    assert!(
                        verify_inclusion(other as u64, n as u64, &tree[i], &proof, &r).is_err()
                    );
                }
            }
            for m in 1..=n {
                let proof = consistency_proof(tree, m as u64).unwrap();
                verify_consistency(m as u64, n as u64, &root(&tree[..m]), &r, &proof).unwrap();
                if m < n {
                    let wrong = root(&all[1..=m]);
                    assert!(verify_consistency(m as u64, n as u64, &wrong, &r, &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn the_level_cache_gives_the_same_roots_and_proofs() {
        let all = leaves(300);
        let tree = tree_of(&all);
        for n in [1usize, 2, 3, 7, 8, 100, 256, 257, 300] {
            assert_eq!(tree.root_at(n as u64), Some(root(&all[..n])), "root at {n}");
            for i in [0, n / 2, n - 1] {
                assert_eq!(
                    tree.inclusion_proof(i as u64, n as u64),
                    inclusion_proof(&all[..n], i as u64)
                );
            }
            for m in [1, n / 3 + 1, n] {
                assert_eq!(
                    tree.consistency_proof(m as u64, n as u64),
                    consistency_proof(&all[..n], m as u64)
                );
            }
        }
        assert_eq!(tree.root_at(301), None);
    }

    #[test]
    fn proofs_made_together_are_the_proofs_made_one_by_one() {
        let all = leaves(140);
        let tree = tree_of(&all);
        for n in 0..=all.len() {
            let together = tree.inclusion_proofs(n as u64).unwrap();
            assert_eq!(together.len(), n);
            for (i, proof) in together.iter().enumerate() {
                assert_eq!(
                    Some(proof),
                    inclusion_proof(&all[..n], i as u64).as_ref(),
                    "leaf {i} of {n}"
                );
            }
        }
        assert_eq!(tree.inclusion_proofs(141), None);
    }

    #[test]
    fn reversed_sizes_and_unconsumed_proofs_are_refused() {
        let all = leaves(8);
        let proof = consistency_proof(&all, 3).unwrap();
        let (r3, r8) = (root(&all[..3]), root(&all));
        assert_eq!(
            verify_consistency(8, 3, &r8, &r3, &proof),
            Err(ProofError::SizesReversed { old: 8, new: 3 })
        );
        let mut longer = proof.clone();
        longer.push([0; 32]);
        assert!(verify_consistency(3, 8, &r3, &r8, &longer).is_err());
        let incl = inclusion_proof(&all, 2).unwrap();
        let mut longer = incl.clone();
        longer.push([0; 32]);
        assert!(verify_inclusion(2, 8, &all[2], &longer, &r8).is_err());
    }
}
