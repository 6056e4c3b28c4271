//! A fitted binary decision tree as the scorer runs it: flat nodes, leaves holding the share of
//! positive training labels that reached them.

use serde::{Deserialize, Serialize};

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

    /// The largest input slot the tree reads, plus one.
    pub fn inputs_read(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.leaf.is_none())
            .map(|n| n.feature + 1)
            .max()
            .unwrap_or(0)
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
}
