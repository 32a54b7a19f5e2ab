"""Test-time search over latent actions (MCTS-Q, cola-spec.md §3 stage 5): the tree (`tree`) and the
Q-network's double-DQN loss (`qlearning`)."""
