//! The generation scheduler (spec §3.9) and the CFG schedules (spec §3.8 step 7).

/// Group sizes: `N // G` each, the first `N % G` groups one more.
pub fn group_sizes(tokens: usize, groups: usize) -> Vec<usize> {
    let groups = groups.max(1);
    let (base, rem) = (tokens / groups, tokens % groups);
    (0..groups).map(|g| base + usize::from(g < rem)).collect()
}

/// Number of groups for an acceleration ratio: `max(1, N // acc_ratio)`.
pub fn group_count(tokens: usize, acc_ratio: usize) -> usize {
    (tokens / acc_ratio.max(1)).max(1)
}

/// Splits `order` into consecutive groups of the given sizes.
pub fn split_groups(order: &[usize], sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&s| {
            let g = order[start..start + s].to_vec();
            start += s;
            g
        })
        .collect()
}

/// The order of generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Random,
    Sequential,
}

/// How the CFG weight changes over the groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CfgSchedule {
    /// `1 + (cfg − 1)·(G − g)/G`, from cfg down to `1 + (cfg − 1)/G`.
    #[default]
    Linear,
    Constant,
}

/// The CFG weight of group `g` of `groups` (group 0 always uses `cfg`).
pub fn cfg_weight(schedule: CfgSchedule, cfg: f64, g: usize, groups: usize) -> f64 {
    match schedule {
        _ if g == 0 => cfg,
        CfgSchedule::Constant => cfg,
        CfgSchedule::Linear => 1.0 + (cfg - 1.0) * (groups - g) as f64 / groups as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remainder_rule() {
        assert_eq!(group_sizes(25, group_count(25, 4)), vec![5, 4, 4, 4, 4, 4]);
        assert_eq!(group_sizes(16, group_count(16, 3)), vec![4, 3, 3, 3, 3]);
        let sizes = group_sizes(256, group_count(256, 3));
        assert_eq!((sizes.len(), sizes[0], sizes[1]), (85, 4, 3));
        assert_eq!(group_sizes(256, group_count(256, 16)), vec![16; 16]);
        assert_eq!(group_sizes(3, group_count(3, 16)), vec![3]);
    }

    #[test]
    fn linear_cfg_decreases_from_cfg() {
        assert_eq!(cfg_weight(CfgSchedule::Linear, 4.5, 0, 4), 4.5);
        assert_eq!(cfg_weight(CfgSchedule::Linear, 4.5, 1, 4), 1.0 + 3.5 * 0.75);
        assert_eq!(cfg_weight(CfgSchedule::Linear, 4.5, 3, 4), 1.0 + 3.5 * 0.25);
        assert_eq!(cfg_weight(CfgSchedule::Constant, 4.5, 3, 4), 4.5);
    }

    #[test]
    fn split_follows_the_order() {
        assert_eq!(split_groups(&[3, 1, 0, 2], &[3, 1]), vec![vec![3, 1, 0], vec![2]]);
    }
}
