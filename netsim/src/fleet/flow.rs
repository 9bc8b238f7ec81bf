//! Max-min fair sharing of links among flows (progressive filling): every flow's rate rises
//! together until a link it crosses is full; the flows through a full link keep their rate and
//! the others go on rising. The result gives no flow more than its fair share on its most
//! contended link, and cannot raise any flow without lowering one that is no faster.

/// One allocation problem, reused between calls to keep its buffers.
#[derive(Debug, Default)]
pub struct MaxMin {
    capacity: Vec<f64>,
    flows: Vec<[u32; 3]>,
    rates: Vec<f64>,
    remaining: Vec<f64>,
    active_on: Vec<u32>,
    frozen: Vec<bool>,
}

/// Marks an unused link slot of a flow.
pub const NONE: u32 = u32::MAX;

impl MaxMin {
    /// Forgets every link and flow.
    pub fn clear(&mut self) {
        self.capacity.clear();
        self.flows.clear();
    }

    /// Adds a link of `capacity` (bytes per second); returns its index.
    pub fn link(&mut self, capacity: f64) -> u32 {
        self.capacity.push(capacity.max(0.0));
        u32::try_from(self.capacity.len() - 1).unwrap_or(NONE)
    }

    /// Adds a flow over up to three links ([`NONE`] for unused slots); returns its index.
    pub fn flow(&mut self, links: [u32; 3]) -> usize {
        self.flows.push(links);
        self.flows.len() - 1
    }

    /// The flows' rates, by index.
    pub fn solve(&mut self) -> &[f64] {
        let (links, flows) = (self.capacity.len(), self.flows.len());
        self.rates.clear();
        self.rates.resize(flows, 0.0);
        self.remaining.clear();
        self.remaining.extend_from_slice(&self.capacity);
        self.active_on.clear();
        self.active_on.resize(links, 0);
        self.frozen.clear();
        self.frozen.resize(flows, false);
        for (f, path) in self.flows.iter().enumerate() {
            if path
                .iter()
                .any(|&l| l != NONE && self.capacity[l as usize] <= 0.0)
            {
                self.frozen[f] = true;
                continue;
            }
            for &l in path.iter().filter(|&&l| l != NONE) {
                self.active_on[l as usize] += 1;
            }
        }
        let mut active = self.frozen.iter().filter(|f| !**f).count();
        while active > 0 {
            let mut step = f64::INFINITY;
            for l in 0..links {
                if self.active_on[l] > 0 {
                    step = step.min(self.remaining[l] / f64::from(self.active_on[l]));
                }
            }
            if !step.is_finite() {
                break;
            }
            for l in 0..links {
                if self.active_on[l] > 0 {
                    self.remaining[l] -= step * f64::from(self.active_on[l]);
                }
            }
            for f in 0..flows {
                if !self.frozen[f] {
                    self.rates[f] += step;
                }
            }
            // Freeze the flows of every link now full.
            for f in 0..flows {
                if self.frozen[f] {
                    continue;
                }
                let path = self.flows[f];
                let full = path.iter().any(|&l| {
                    l != NONE
                        && self.remaining[l as usize] <= self.capacity[l as usize] * 1e-9 + 1e-9
                });
                if full {
                    self.frozen[f] = true;
                    active -= 1;
                    for &l in path.iter().filter(|&&l| l != NONE) {
                        self.active_on[l as usize] -= 1;
                    }
                }
            }
        }
        &self.rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn one_link_is_shared_equally() {
        let mut m = MaxMin::default();
        let l = m.link(90.0);
        for _ in 0..3 {
            m.flow([l, NONE, NONE]);
        }
        assert!(m.solve().iter().all(|&r| close(r, 30.0)));
    }

    #[test]
    fn a_flow_held_back_elsewhere_leaves_its_share_to_the_others() {
        // Classic example: link A (10) carries flows 0 and 1; link B (4) carries flow 1 only.
        let mut m = MaxMin::default();
        let a = m.link(10.0);
        let b = m.link(4.0);
        m.flow([a, NONE, NONE]);
        m.flow([a, b, NONE]);
        let rates = m.solve().to_vec();
        assert!(close(rates[1], 4.0), "{rates:?}");
        assert!(close(rates[0], 6.0), "{rates:?}");
    }

    #[test]
    fn a_yard_shares_the_depot_and_the_wifi() {
        // Depot 100 up, WiFi 150, three vehicles of 40 down each, each fed by the depot and by
        // a peer pool of 60.
        let mut m = MaxMin::default();
        let depot = m.link(100.0);
        let pool = m.link(60.0);
        let wifi = m.link(150.0);
        let downs: Vec<u32> = (0..3).map(|_| m.link(40.0)).collect();
        for &d in &downs {
            m.flow([depot, wifi, d]);
            m.flow([pool, wifi, d]);
        }
        let rates = m.solve().to_vec();
        let total: f64 = rates.iter().sum();
        // Each vehicle's downlink (3 × 40 = 120) binds before the WiFi (150).
        assert!(close(total, 120.0), "{rates:?}");
        assert!(rates.iter().all(|&r| close(r, 20.0)), "{rates:?}");
    }

    #[test]
    fn a_link_without_capacity_carries_nothing() {
        let mut m = MaxMin::default();
        let dead = m.link(0.0);
        let live = m.link(10.0);
        m.flow([dead, live, NONE]);
        m.flow([live, NONE, NONE]);
        let rates = m.solve().to_vec();
        assert_eq!(rates[0], 0.0);
        assert!(close(rates[1], 10.0));
    }
}
