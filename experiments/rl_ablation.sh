#!/usr/bin/env bash
# The pre-registered RL ablation of docs/rl-ablation.md (issue 13): one `dvc exp run` per arm, queued, then
# run one at a time. Every arm is judged on the validation split (rl.val_prompts=450: the whole arith
# validation split, at the last step); nothing here touches the test split.
#
#   experiments/rl_ablation.sh            # queue every arm and run the queue
#   experiments/rl_ablation.sh A0 A3      # queue and run only these arms
#   dvc exp show --only-changed           # the table: val_greedy_acc, its _sd, reward_end per arm
#
# Needs a project where `dvc repro` has run and dvc.lock is committed (the queue starts from that commit;
# the base, latent, BC and FTA models come from the cache and are shared by every arm).
set -euo pipefail

COMMON=(-S 'rl.seeds=[0,1,2]' -S rl.val_prompts=450 -S rl.val_every=50)
COLA=(rl@cola-math)
TOKEN=(rl@token-math)

declare -A ARMS=(
  [A0]="${COLA[*]}"
  [A1]="-S rl.cola_start=bc ${COLA[*]}"
  [A2]="-S rl.steps=650 ${COLA[*]}"
  [A3]="-S rl.cola_start=bc -S rl.steps=650 ${COLA[*]}"
  [A4a]="-S rl.lr=3e-5 ${COLA[*]}"
  [A4b]="-S rl.lr=3e-4 ${COLA[*]}"
  [A5a]="-S rl.kl_coef=0 ${COLA[*]}"
  [A5b]="-S rl.kl_coef=0.01 ${COLA[*]}"
  [A6]="-S rl.advantage_mode=group -S rl.kl_in=loss ${COLA[*]}"
  [A7a]="-S rl.baseline=rloo ${COLA[*]}"
  [A7b]="-S rl.baseline=remax ${COLA[*]}"
  [A8a]="-S rl.action_top_k=64 ${COLA[*]}"
  [A8b]="-S rl.action_temperature=1.5 ${COLA[*]}"
  [A9]="-S latent.cola.n_policy_layers=2 ${COLA[*]}"
  [A10a]="-S fta.variant=fta_i ${COLA[*]}"
  [A10b]="-S fta.lr=1e-4 ${COLA[*]}"
  [A10c]="-S fta.steps=150 ${COLA[*]}"
  [T0]="${TOKEN[*]}"
  [T1a]="-S rl.lr=3e-5 ${TOKEN[*]}"
  [T1b]="-S rl.lr=3e-4 ${TOKEN[*]}"
  [T1c]="-S rl.token_temperature=0.7 ${TOKEN[*]}"
)
ORDER=(A0 A1 A2 A3 A4a A4b A5a A5b A6 A7a A7b A8a A8b A9 A10a A10b A10c T0 T1a T1b T1c)

arms=("$@")
[ ${#arms[@]} -gt 0 ] || arms=("${ORDER[@]}")
for arm in "${arms[@]}"; do
  [ -n "${ARMS[$arm]+x}" ] || { echo "error: unknown arm $arm (known: ${ORDER[*]})" >&2; exit 2; }
done
for arm in "${arms[@]}"; do
  # shellcheck disable=SC2086 # each arm's words are -S options and stage names
  dvc exp run --queue -n "ablation-$arm" "${COMMON[@]}" ${ARMS[$arm]}
done
dvc queue start --jobs 1
dvc queue status
