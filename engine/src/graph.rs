//! The stage graph: an edge from every stage to each stage that reads it. Built once, checked
//! for cycles (reported as a path), then read only. Every walk keeps its own stack or queue,
//! so a graph of any depth is handled without recursion.
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;
use std::collections::{BTreeSet, VecDeque};

#[derive(Debug, Clone)]
pub struct StageGraph {
    graph: DiGraph<usize, ()>,
    order: Vec<usize>,
}

impl StageGraph {
    /// Builds the graph of stages `0..upstream.len()`, where `upstream[i]` lists the stages
    /// that stage `i` reads. A cycle comes back as the indices along it, each stage followed by
    /// one it reads.
    pub fn new(upstream: &[Vec<usize>]) -> Result<StageGraph, Vec<usize>> {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..upstream.len()).map(|i| graph.add_node(i)).collect();
        for (i, reads) in upstream.iter().enumerate() {
            for &j in reads {
                graph.update_edge(nodes[j], nodes[i], ());
            }
        }
        // Kahn's algorithm, taking the earliest-declared ready stage first: a stable order. A
        // stage it never reaches is on a cycle or downstream of one.
        let mut indegree: Vec<usize> =
            nodes.iter().map(|&n| graph.neighbors_directed(n, Direction::Incoming).count()).collect();
        let mut ready: BTreeSet<usize> = (0..upstream.len()).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(upstream.len());
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for next in graph.neighbors_directed(nodes[i], Direction::Outgoing) {
                let j = graph[next];
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    ready.insert(j);
                }
            }
        }
        if order.len() < upstream.len() {
            return Err(find_cycle(&graph).expect("a graph Kahn's algorithm cannot order has a cycle"));
        }
        Ok(StageGraph { graph, order })
    }

    /// Every stage, each after all the stages it reads.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The stages `i` reads directly.
    pub fn upstream(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
            .map(|n| self.graph[n])
            .collect();
        v.sort();
        v
    }

    /// `i` and every stage it depends on, directly or not.
    pub fn with_ancestors(&self, i: usize) -> BTreeSet<usize> {
        self.closure(i, Direction::Incoming)
    }

    /// `i` and every stage that depends on it, directly or not.
    pub fn with_descendants(&self, i: usize) -> BTreeSet<usize> {
        self.closure(i, Direction::Outgoing)
    }

    fn closure(&self, i: usize, direction: Direction) -> BTreeSet<usize> {
        let mut seen = BTreeSet::from([i]);
        let mut queue = VecDeque::from([i]);
        while let Some(j) = queue.pop_front() {
            for n in self.graph.neighbors_directed(NodeIndex::new(j), direction) {
                if seen.insert(self.graph[n]) {
                    queue.push_back(self.graph[n]);
                }
            }
        }
        seen
    }
}

/// A cycle as the nodes along it, if the graph has one. Kosaraju's algorithm, whose depth-first
/// searches keep their own stack: petgraph's Tarjan recurses once per node and overflows the
/// thread's stack on a chain of 100,000 stages.
fn find_cycle(graph: &DiGraph<usize, ()>) -> Option<Vec<usize>> {
    let component = petgraph::algo::kosaraju_scc(graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .min_by_key(|c| c.iter().map(|n| graph[*n]).min())?;
    let members: BTreeSet<NodeIndex> = component.iter().copied().collect();
    let start = *component.iter().min_by_key(|n| graph[**n])?;
    // Breadth-first along "reads" edges from start back to start, inside the component.
    let mut parent = std::collections::HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in graph.neighbors_directed(node, Direction::Incoming) {
            if !members.contains(&next) {
                continue;
            }
            if next == start {
                let mut path = vec![graph[node]];
                let mut at = node;
                while at != start {
                    at = parent[&at];
                    path.push(graph[at]);
                }
                path.reverse();
                return Some(path);
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = parent.entry(next) {
                slot.insert(node);
                queue.push_back(next);
            }
        }
    }
    None
}
