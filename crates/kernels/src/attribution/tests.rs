//! Attribution models on hand-computed journeys, against brute force where one exists.

use super::*;

/// A journey row: touches, conversions, value, nulls.
type Row<'a> = (&'a [u32], f64, f64, f64);

fn path(touches: &[u32], conversions: f64, value: f64, nulls: f64) -> Row<'_> {
    (touches, conversions, value, nulls)
}

fn table(rows: &[Row]) -> PathTable {
    let mut t = PathTable::default();
    for &(touches, c, v, n) in rows {
        t.push(touches, c, v, n);
    }
    t
}

fn heuristic(model: Heuristic, n: usize, direct: &[bool], ages: Option<&[i64]>) -> Vec<f64> {
    let mut w = Vec::new();
    model.weights(n, direct, ages, &mut w).unwrap();
    w
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
    }
}

#[test]
fn heuristics_split_one_journey_by_position() {
    let none: &[bool] = &[];
    close(
        &heuristic(Heuristic::FirstTouch, 3, none, None),
        &[1.0, 0.0, 0.0],
    );
    close(
        &heuristic(Heuristic::LastTouch, 3, none, None),
        &[0.0, 0.0, 1.0],
    );
    close(&heuristic(Heuristic::Linear, 4, none, None), &[0.25; 4]);
    let pb = Heuristic::PositionBased {
        first: 0.4,
        last: 0.4,
    };
    close(&heuristic(pb, 1, none, None), &[1.0]);
    close(&heuristic(pb, 2, none, None), &[0.5, 0.5]);
    close(&heuristic(pb, 3, none, None), &[0.4, 0.2, 0.4]);
    close(&heuristic(pb, 4, none, None), &[0.4, 0.1, 0.1, 0.4]);
    let uneven = Heuristic::PositionBased {
        first: 0.3,
        last: 0.6,
    };
    close(&heuristic(uneven, 2, none, None), &[1.0 / 3.0, 2.0 / 3.0]);
    assert!(heuristic(Heuristic::Linear, 0, none, None).is_empty());
}

#[test]
fn last_non_direct_skips_direct_unless_all_direct() {
    let m = Heuristic::LastNonDirect;
    close(
        &heuristic(m, 3, &[false, false, true], None),
        &[0.0, 1.0, 0.0],
    );
    close(
        &heuristic(m, 3, &[false, true, true], None),
        &[1.0, 0.0, 0.0],
    );
    close(&heuristic(m, 2, &[true, true], None), &[0.0, 1.0]);
    close(&heuristic(m, 2, &[], None), &[0.0, 1.0]);
}

#[test]
fn time_decay_halves_weight_per_half_life() {
    let day = 86_400_000;
    let m = Heuristic::TimeDecay {
        half_life_ms: 7 * day,
    };
    // Ages 14, 7 and 0 days: weights 1/4, 1/2, 1 before normalizing by 7/4.
    let w = heuristic(m, 3, &[], Some(&[14 * day, 7 * day, 0]));
    close(&w, &[1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]);
    // Very old touches do not underflow: only relative ages matter.
    let w = heuristic(m, 2, &[], Some(&[5000 * 7 * day + 7 * day, 5000 * 7 * day]));
    close(&w, &[1.0 / 3.0, 2.0 / 3.0]);
    let mut out = Vec::new();
    assert_eq!(
        m.weights(2, &[], None, &mut out),
        Err(AttributionError::NeedsTimes {
            model: "time_decay"
        })
    );
}

#[test]
fn credit_adds_weighted_conversions_and_value() {
    let mut c = Credit::new(3);
    c.add(&[0, 2, 0], &[0.5, 0.25, 0.25], 2.0, 100.0);
    close(&c.conversions, &[1.5, 0.0, 0.5]);
    close(&c.value, &[75.0, 0.0, 25.0]);
}

#[test]
fn markov_order_one_by_hand() {
    // a > b converts once, b alone fails once. From the start: P = 1/2 * 1/2 + 1/2 * 1/2
    // = 1/2. Without a: 1/4 (removal effect 1/2); without b: 0 (removal effect 1).
    // Credits 1 conversion as 1/3 : 2/3.
    let paths = table(&[path(&[0, 1], 1.0, 30.0, 0.0), path(&[1], 0.0, 0.0, 1.0)]);
    let m = markov(&paths, 2, 1).unwrap();
    assert!((m.conversion_probability - 0.5).abs() < 1e-12);
    close(&m.removal_effects, &[0.5, 1.0]);
    close(&m.credit.conversions, &[1.0 / 3.0, 2.0 / 3.0]);
    close(&m.credit.value, &[10.0, 20.0]);
    assert_eq!(m.states, 3);
}

#[test]
fn markov_order_two_keeps_history_in_the_state() {
    // At order 2, a > c and b > c reach different states (a,c) and (b,c), so c's
    // conversions after a and its failures after b stay apart; at order 1 they pool.
    let paths = table(&[path(&[0, 2], 2.0, 0.0, 0.0), path(&[1, 2], 0.0, 0.0, 2.0)]);
    let one = markov(&paths, 3, 1).unwrap();
    let two = markov(&paths, 3, 2).unwrap();
    // Order 1: c converts half its walks, so P(start) = 1/2; removing a or b halves it.
    close(&one.removal_effects, &[0.5, 0.5, 1.0]);
    // Order 2: only a's walks convert. Removing a loses everything, b nothing, c everything.
    close(&two.removal_effects, &[1.0, 0.0, 1.0]);
    close(&two.credit.conversions, &[1.0, 0.0, 1.0]);
}

#[test]
fn markov_handles_repeats_and_cycles_exactly() {
    // a > a > b, b > a > b, a: loops of a on itself and b back to a.
    let paths = table(&[
        path(&[0, 0, 1], 3.0, 3.0, 1.0),
        path(&[1, 0, 1], 1.0, 1.0, 2.0),
        path(&[0], 0.0, 0.0, 4.0),
    ]);
    for order in 1..=ORDER_MAX {
        let got = markov(&paths, 2, order).unwrap();
        let want = dense_markov(&paths, 2, order);
        close(&got.removal_effects, &want);
        let total: f64 = got.credit.conversions.iter().sum();
        assert!((total - 4.0).abs() < 1e-9);
    }
}

#[test]
fn markov_equals_a_dense_solve_on_random_tables() {
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..40 {
        let labels = 1 + (next() % 5) as usize;
        let mut paths = PathTable::default();
        for _ in 0..1 + next() % 12 {
            let len = 1 + (next() % 5) as usize;
            let touches: Vec<u32> = (0..len).map(|_| (next() % labels as u64) as u32).collect();
            let conversions = (next() % 4) as f64;
            let value = conversions * (next() % 50) as f64;
            // `add` merges equal paths, `push` keeps them apart: the chain is the same.
            if next() % 2 == 0 {
                paths.add(&touches, conversions, value, (next() % 4) as f64);
            } else {
                paths.push(&touches, conversions, value, (next() % 4) as f64);
            }
        }
        for order in 1..=3 {
            let got = markov(&paths, labels, order).unwrap();
            let want = dense_markov(&paths, labels, order);
            close(&got.removal_effects, &want);
        }
    }
}

#[test]
fn markov_rejects_bad_orders_and_credits_nothing_without_conversions() {
    let empty = PathTable::default();
    assert_eq!(markov(&empty, 1, 0), Err(AttributionError::Order));
    assert_eq!(
        markov(&empty, 1, ORDER_MAX + 1),
        Err(AttributionError::Order)
    );
    let m = markov(&table(&[path(&[0], 0.0, 0.0, 3.0)]), 1, 1).unwrap();
    close(&m.credit.conversions, &[0.0]);
    assert_eq!(m.conversion_probability, 0.0);
}

#[test]
fn shapley_equals_brute_force_over_coalitions() {
    let paths = table(&[
        path(&[0, 1], 4.0, 40.0, 1.0),
        path(&[1, 1, 2], 3.0, 9.0, 0.0),
        path(&[2], 2.0, 2.0, 5.0),
        path(&[0, 2, 1, 0], 1.0, 7.0, 0.0),
        path(&[3], 0.0, 0.0, 9.0),
    ]);
    let got = shapley(&paths, 4);
    let (conv, value) = brute_force_shapley(&paths, 4);
    close(&got.conversions, &conv);
    close(&got.value, &value);
    assert_eq!(
        got.conversions[3], 0.0,
        "a label seen only on null journeys earns nothing"
    );
    assert!((got.conversions.iter().sum::<f64>() - 10.0).abs() < 1e-9);
}

/// Shapley by definition: the average over every order of the labels of each label's
/// marginal worth, v(S) being the conversions of journeys whose labels all lie in S.
fn brute_force_shapley(paths: &PathTable, labels: usize) -> (Vec<f64>, Vec<f64>) {
    let worth = |set: u32, f: &dyn Fn(&PathRef) -> f64| -> f64 {
        paths
            .iter()
            .filter(|p| !p.touches.is_empty() && p.touches.iter().all(|&t| set & (1 << t) != 0))
            .map(|p| f(&p))
            .sum()
    };
    let mut conv = vec![0.0; labels];
    let mut value = vec![0.0; labels];
    let mut perm: Vec<usize> = (0..labels).collect();
    let mut count = 0.0;
    permutations(&mut perm, 0, &mut |order| {
        count += 1.0;
        let mut set = 0u32;
        for &l in order {
            let before = set;
            set |= 1 << l;
            conv[l] += worth(set, &|p| p.conversions) - worth(before, &|p| p.conversions);
            value[l] += worth(set, &|p| p.value) - worth(before, &|p| p.value);
        }
    });
    conv.iter_mut().for_each(|c| *c /= count);
    value.iter_mut().for_each(|v| *v /= count);
    (conv, value)
}

fn permutations(v: &mut Vec<usize>, k: usize, f: &mut dyn FnMut(&[usize])) {
    if k == v.len() {
        f(v);
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permutations(v, k + 1, f);
        v.swap(k, i);
    }
}

/// Removal effects from the absorbing chain solved by Gaussian elimination on a dense
/// matrix: the textbook method, independent of the sparse iterative solver.
fn dense_markov(paths: &PathTable, labels: usize, order: usize) -> Vec<f64> {
    use std::collections::HashMap;
    let mut ids: HashMap<Vec<u32>, usize> = HashMap::new();
    ids.insert(Vec::new(), 0);
    let mut edges: HashMap<(usize, usize), f64> = HashMap::new();
    let mut conv: HashMap<usize, f64> = HashMap::new();
    let mut out: HashMap<usize, f64> = HashMap::new();
    for p in paths
        .iter()
        .filter(|p| !p.touches.is_empty() && p.conversions + p.nulls > 0.0)
    {
        let w = p.conversions + p.nulls;
        let mut prev = 0;
        for i in 0..p.touches.len() {
            let state = p.touches[i.saturating_sub(order - 1)..=i].to_vec();
            let n = ids.len();
            let id = *ids.entry(state).or_insert(n);
            *edges.entry((prev, id)).or_default() += w;
            *out.entry(prev).or_default() += w;
            prev = id;
        }
        *conv.entry(prev).or_default() += p.conversions;
        *out.entry(prev).or_default() += w;
    }
    let n = ids.len();
    let solve = |removed: Option<u32>| -> f64 {
        let dead =
            |s: usize| removed.is_some_and(|r| ids.iter().any(|(k, &v)| v == s && k.contains(&r)));
        // (I - Q) x = b over all states; dead states have x = 0.
        let mut a = vec![vec![0.0f64; n + 1]; n];
        for (s, row) in a.iter_mut().enumerate() {
            row[s] = 1.0;
            if dead(s) {
                continue;
            }
            let total = out.get(&s).copied().unwrap_or(0.0);
            if total == 0.0 {
                continue;
            }
            for (&(from, to), &w) in &edges {
                if from == s {
                    row[to] -= w / total;
                }
            }
            row[n] = conv.get(&s).copied().unwrap_or(0.0) / total;
        }
        for c in 0..n {
            let p = (c..n)
                .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
                .unwrap();
            a.swap(c, p);
            let pivot = a[c][c];
            a[c][c..].iter_mut().for_each(|v| *v /= pivot);
            let row_c = a[c].clone();
            for (r, row) in a.iter_mut().enumerate() {
                if r != c {
                    let f = row[c];
                    for (v, p) in row[c..].iter_mut().zip(&row_c[c..]) {
                        *v -= f * p;
                    }
                }
            }
        }
        a[0][n]
    };
    let base = solve(None);
    (0..labels as u32)
        .map(|l| {
            let present = ids.keys().any(|k| k.contains(&l));
            if base > 0.0 && present {
                (1.0 - solve(Some(l)) / base).max(0.0)
            } else {
                0.0
            }
        })
        .collect()
}

#[test]
fn a_path_table_merges_equal_paths_in_first_seen_order() {
    let mut t = PathTable::default();
    t.add(&[2, 1], 1.0, 10.0, 0.0);
    t.add(&[1], 0.0, 0.0, 1.0);
    t.add(&[2, 1], 2.0, 5.0, 3.0);
    t.add(&[2], 1.0, 1.0, 0.0);
    t.add(&[], 0.0, 0.0, 1.0);
    t.add(&[1], 0.0, 0.0, 1.0);
    let rows: Vec<(Vec<u32>, f64, f64, f64)> = t
        .iter()
        .map(|p| (p.touches.to_vec(), p.conversions, p.value, p.nulls))
        .collect();
    assert_eq!(
        rows,
        [
            (vec![2, 1], 3.0, 15.0, 3.0),
            (vec![1], 0.0, 0.0, 2.0),
            (vec![2], 1.0, 1.0, 0.0),
            (vec![], 0.0, 0.0, 1.0),
        ]
    );
}
