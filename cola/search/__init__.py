"""Test-time search over latent actions (MCTS-Q, cola-spec.md §3 stage 5): the tree (`tree`), the Q-network
(`qnetwork`), its double-DQN loss (`qlearning`) and training (`qlearn`), and the search loop (`mcts`)."""
