// `job.workload = "serve"`: the service as a job (`mobula serve SPEC`, `mobula run`, `mobula
// submit`): rank 0 opens the engine on serve.state_dir, listens on serve.host:serve.port, writes
// WORKDIR/serve.json ({"url", "host", "port", "pid", "state_dir"}) once it accepts connections, and
// serves until a stop signal (SIGTERM, Slurm's pre-timeout signal), which returns preempted (exit
// 3: requeue; the journal keeps what was queued). Also the token commands of the CLI.
#pragma once

#include <string>

#include "rl/roles/workload.h"

namespace mobula::serve {

Status run_serve(const rl::WorkloadContext& ctx);

// `mobula serve token create|list|revoke SPEC [--name N]`: the clients of the spec's state. create
// prints the new token once (only its SHA-256 is stored).
int cmd_token(const std::string& action, const JobSpec& spec, const std::string& name);

}  // namespace mobula::serve
