// The wire format of a rollout batch (rollout rank -> trainer, as the bytes of an object ref's
// tensor; docs/rl.md "Data flow"). Host byte order: both ends are ranks of one job on one kind of
// machine.
//
//   RolloutStats              raw struct bytes
//   u64 n                     records
//   n x { i32 prompt, i32 sample, u64 len + len x i32 seq, i32 first, f32 advantage,
//         u64 len + len x f32 logp_old }
//
// decode() checks every length against the bytes left and every record's consistency (first >= 1,
// first + |logp_old| == |seq|); a malformed message is an error naming the record, never a crash.
#pragma once

#include <cstdint>
#include <vector>

#include "core/runtime/status.h"
#include "rl/algo/grpo.h"

namespace mobula::rl {

std::vector<uint8_t> encode_rollouts(const RolloutStats& stats, const std::vector<const RolloutRecord*>& records);
// Appends the decoded records to *out.
Status decode_rollouts(const std::vector<uint8_t>& bytes, RolloutStats* stats, std::vector<RolloutRecord>* out);

}  // namespace mobula::rl
