//! A fitted binary decision tree as the scorer runs it: flat nodes, leaves holding the share of
//! positive training labels that reached them.

use serde::{Deserialize, Serialize};

use crate::predictor::threshold;

/// One node. Internal nodes send `x[feature] < split` left and everything else (NaN included)
/// right; leaves hold `p(y = 1)`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TreeNode {
    /// Input slot compared at an internal node.
    pub feature: usize,
    /// Threshold of an internal node.
    pub split: f64,
    /// Index of the left child (internal nodes).
    pub left: usize,
    /// Index of the right child (internal nodes).
    pub right: usize,
    /// `Some(p)` at a leaf: the share of positive training labels that reached it.
    pub leaf: Option<f64>,
}

/// Nodes with the root first, and a decision threshold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TreeModel {
    /// Nodes; node 0 is the root.
    pub nodes: Vec<TreeNode>,
    /// Scores at or above this are the positive decision.
    pub threshold: f64,
}

impl TreeModel {
    /// The tree is walkable and its values sane: at least one node; every internal node's
    /// children exist and come after it (the trainer writes nodes root first, depth first), so
    /// every walk ends at a leaf; splits finite; leaves shares in [0, 1]; the threshold in
    /// [0, 1].
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("a tree needs at least one node".into());
        }
        let n = self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            match node.leaf {
                Some(p) if !(0.0..=1.0).contains(&p) => {
                    return Err(format!(
                        "nodes[{i}].leaf is {p:?}: a leaf holds a share of positives, in [0, 1]"
                    ));
                }
                Some(_) => {}
                None => {
                    for (side, child) in [("left", node.left), ("right", node.right)] {
                        if child <= i || child >= n {
                            return Err(format!(
                                "nodes[{i}].{side} is {child}: a child must be one of the \
                                 nodes after it, {} to {}",
                                i + 1,
                                n - 1
                            ));
                        }
                    }
                    if !node.split.is_finite() {
                        return Err(format!(
                            "nodes[{i}].split is {:?}: a split must be finite",
                            node.split
                        ));
                    }
                }
            }
        }
        threshold(self.threshold)
    }

    /// The probability of the positive class: the leaf's share of positives. A malformed tree
    /// (a child index out of range, or a cycle longer than the node count) scores NaN.
    pub fn predict_proba(&self, x: &[f64]) -> f64 {
        self.leaf(|f| x.get(f).copied().unwrap_or(f64::NAN))
            .and_then(|i| self.nodes[i].leaf)
            .unwrap_or(f64::NAN)
    }

    /// The index of the leaf an input reaches; `x(slot)` reads an input slot. `None` for a
    /// malformed tree.
    pub fn leaf(&self, x: impl Fn(usize) -> f64) -> Option<usize> {
        let mut i = 0;
        for _ in 0..=self.nodes.len() {
            let n = self.nodes.get(i)?;
            if n.leaf.is_some() {
                return Some(i);
            }
            i = if x(n.feature) < n.split {
                n.left
            } else {
                n.right
            };
        }
        None
    }

    /// The decision at the threshold.
    pub fn decide(&self, score: f64) -> bool {
        score >= self.threshold
    }

    /// The largest input slot the tree reads, plus one (saturating: a bundle may hold any
    /// index, and the signature check refuses it).
    pub fn inputs_read(&self) -> usize {
        self.last_slot_read().map_or(0, |f| f.saturating_add(1))
    }

    /// The largest input slot an internal node reads.
    pub fn last_slot_read(&self) -> Option<usize> {
        self.nodes
            .iter()
            .filter(|n| n.leaf.is_none())
            .map(|n| n.feature)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_to_the_leaf_by_hand() {
        let leaf = |p| TreeNode {
            feature: 0,
            split: 0.0,
            left: 0,
            right: 0,
            leaf: Some(p),
        };
        let t = TreeModel {
            nodes: vec![
                TreeNode {
                    feature: 1,
                    split: 2.0,
                    left: 1,
                    right: 2,
                    leaf: None,
                },
                leaf(0.1),
                leaf(0.8),
            ],
            threshold: 0.5,
        };
        assert_eq!(t.predict_proba(&[0.0, 1.9]), 0.1);
        assert_eq!(t.predict_proba(&[0.0, 2.0]), 0.8);
        assert_eq!(t.predict_proba(&[0.0, f64::NAN]), 0.8);
        assert!(t.decide(0.8) && !t.decide(0.1));
        assert_eq!(t.inputs_read(), 2);
        let broken = TreeModel {
            nodes: vec![TreeNode {
                feature: 0,
                split: 0.0,
                left: 0,
                right: 0,
                leaf: None,
            }],
            threshold: 0.5,
        };
        assert!(
            broken.predict_proba(&[1.0]).is_nan(),
            "a cycle does not hang"
        );
    }

    #[test]
    fn malformed_trees_and_insane_values_are_refused() {
        let node = |left, right, leaf| TreeNode {
            feature: 0,
            split: 0.5,
            left,
            right,
            leaf,
        };
        let ok = TreeModel {
            nodes: vec![
                node(1, 2, None),
                node(0, 0, Some(0.0)),
                node(0, 0, Some(1.0)),
            ],
            threshold: 0.5,
        };
        assert_eq!(ok.validate(), Ok(()));
        let with = |f: &dyn Fn(&mut TreeModel)| {
            let mut t = ok.clone();
            f(&mut t);
            t.validate().unwrap_err()
        };
        assert_eq!(
            with(&|t| t.nodes[0].right = 3),
            "nodes[0].right is 3: a child must be one of the nodes after it, 1 to 2"
        );
        assert!(
            with(&|t| t.nodes[0].left = 0).starts_with("nodes[0].left is 0:"),
            "a self-loop"
        );
        assert!(with(&|t| t.nodes[0].split = f64::INFINITY).starts_with("nodes[0].split is inf"));
        assert!(with(&|t| t.nodes[2].leaf = Some(1.5)).starts_with("nodes[2].leaf is 1.5:"));
        assert!(with(&|t| t.nodes[1].leaf = Some(f64::NAN)).starts_with("nodes[1].leaf is NaN"));
        assert!(with(&|t| t.threshold = 7.5).starts_with("threshold is 7.5"));
        assert!(with(&|t| t.nodes.clear()).contains("at least one node"));
        // A feature index at the end of usize neither overflows nor panics: the signature
        // check refuses it as a slot beyond the inputs.
        let mut far = ok.clone();
        far.nodes[0].feature = usize::MAX;
        assert_eq!(far.validate(), Ok(()));
        assert_eq!(far.inputs_read(), usize::MAX);
        assert!(
            far.predict_proba(&[1.0]).is_finite(),
            "a missing slot reads as NaN"
        );
    }
}
