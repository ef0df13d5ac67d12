#include "slurm/batch_script.h"

#include "core/config.h"
#include "core/runtime/process.h"

namespace mobula::slurm {

std::vector<BatchComponent> batch_components(const JobSpec& spec) {
  std::vector<BatchComponent> out;
  for (const auto& role : spec.roles) {
    const SlurmResources res = spec.slurm.for_role(role.name);
    BatchComponent* c = nullptr;
    for (auto& x : out)
      if (x.resources == res) c = &x;
    if (!c) {
      out.push_back({res, {}, 0});
      c = &out.back();
    }
    c->roles.push_back(role.name);
    c->ranks += role.ranks;
  }
  return out;
}

namespace {

// The key that set a component's nodes/tasks_per_node: a role's own key where one set it.
std::string key_of(const JobSpec& spec, const BatchComponent& c, const std::string& field) {
  for (const auto& r : c.roles) {
    const auto& raw = spec.slurm.role.at(r);
    if ((field == "nodes" ? raw.nodes : raw.tasks_per_node) > 0) return "slurm." + r + "." + field;
  }
  return "slurm." + field;
}

void resource_lines(const BatchComponent& c, const std::string& time, std::string* out) {
  const auto line = [&](const std::string& opt, const std::string& v) {
    if (!v.empty()) *out += "#SBATCH --" + opt + "=" + v + "\n";
  };
  const auto num = [&](const std::string& opt, int v) {
    if (v > 0) line(opt, std::to_string(v));
  };
  line("partition", c.resources.partition);
  line("account", c.resources.account);
  line("qos", c.resources.qos);
  line("time", time);
  num("nodes", c.resources.nodes);
  line("ntasks", std::to_string(c.ranks));
  num("ntasks-per-node", c.resources.tasks_per_node);
  num("gpus-per-node", c.resources.gpus_per_node);
  line("gres", c.resources.gres);
  line("constraint", c.resources.constraint);
}

}  // namespace

Result<BatchScript> render_batch_script(const JobSpec& spec, const RenderOptions& opt) {
  BatchScript bs;
  bs.components = batch_components(spec);
  if (bs.components.empty()) return Status::invalid_spec(spec.where("roles") + ": roles: the job has no ranks");
  const bool het = bs.components.size() > 1;
  for (const auto& c : bs.components) {
    const auto& r = c.resources;
    if (r.nodes > c.ranks) {
      const std::string k = key_of(spec, c, "nodes");
      return Status::invalid_spec(spec.where(k) + ": " + k + ": " + std::to_string(r.nodes) + " nodes for " +
                                  std::to_string(c.ranks) + " ranks (" + c.roles.front() +
                                  (c.roles.size() > 1 ? " and others" : "") + "); lower it or add ranks");
    }
    if (r.nodes > 0 && r.tasks_per_node > 0 && r.nodes * r.tasks_per_node < c.ranks) {
      const std::string k = key_of(spec, c, "tasks_per_node");
      return Status::invalid_spec(spec.where(k) + ": " + k + ": " + std::to_string(r.nodes) + " nodes x " +
                                  std::to_string(r.tasks_per_node) + " tasks cannot hold " + std::to_string(c.ranks) +
                                  " ranks");
    }
  }

  const auto& sl = spec.slurm;
  std::string t = "#!/bin/bash\n";
  t += "# Rendered by `mobula submit` (mobula " MOBULA_VERSION ") from " + opt.origin + ", spec hash " + spec.hash() +
       ".\n";
  t += "# Submit again with: sbatch " + join_command({opt.workdir + "/sbatch.sh"}) + "\n";
  t += "#SBATCH --job-name=" + spec.name + "\n";
  t += "#SBATCH --chdir=" + opt.workdir + "\n";
  t += "#SBATCH --output=" + opt.workdir + "/slurm-%j.out\n";
  t += sl.requeue ? "#SBATCH --requeue\n" : "#SBATCH --no-requeue\n";
  t += "#SBATCH --open-mode=append\n";  // a requeued job adds to its log instead of truncating it
  if (sl.signal_grace_s > 0) t += "#SBATCH --signal=B:" + sl.signal + "@" + std::to_string(sl.signal_grace_s) + "\n";
  for (const auto& e : sl.extra) t += "#SBATCH " + e + "\n";
  for (size_t g = 0; g < bs.components.size(); ++g) {
    if (g > 0) t += "#SBATCH hetjob\n";
    resource_lines(bs.components[g], sl.time, &t);
  }
  t += "\nset -eo pipefail\n";
  for (size_t g = 0; g < bs.components.size(); ++g) {
    const auto& c = bs.components[g];
    t += "# " + std::string(het ? "component " + std::to_string(g) + ": " : "ranks: ");
    for (size_t i = 0; i < c.roles.size(); ++i)
      t += (i ? ", " : "") + c.roles[i] + " x" + std::to_string(spec.role(c.roles[i])->ranks);
    t += "\n";
  }
  for (const auto& e : sl.env) {
    const auto eq = e.find('=');
    t += "export " + e.substr(0, eq) + "=" + join_command({e.substr(eq + 1)}) + "\n";
  }

  std::vector<std::string> srun = {"srun"};
  if (het) {
    std::string groups;
    for (size_t g = 0; g < bs.components.size(); ++g) groups += (g ? "," : "") + std::to_string(g);
    srun.push_back("--het-group=" + groups);
  }
  srun.push_back("--mpi=" + sl.mpi);
  srun.push_back("--kill-on-bad-exit=1");  // one dead rank ends the step, so it can be relaunched
  srun.insert(srun.end(), {opt.mobula_exe, "worker", opt.spec_copy});
  for (const auto& s : opt.sets) srun.insert(srun.end(), {"--set", s});
  srun.insert(srun.end(), {"--set", "job.workdir=" + opt.workdir});
  if (het)
    for (size_t g = 0; g < bs.components.size(); ++g)
      for (const auto& r : bs.components[g].roles)
        srun.insert(srun.end(), {"--set", "roles." + r + ".het_group=" + std::to_string(g)});
  std::vector<std::string> step = {opt.mobula_exe,    "step",
                                   "--grace",         std::to_string(sl.step_grace_s),
                                   "--max-restarts",  std::to_string(spec.fault.max_restarts),
                                   "--restart-delay", std::to_string(spec.fault.restart_delay_s),
                                   "--max-requeues",  std::to_string(sl.requeue ? spec.fault.max_requeues : 0)};
  if (sl.keep_on_failure_s > 0) step.insert(step.end(), {"--keep-on-failure", std::to_string(sl.keep_on_failure_s)});
  step.insert(step.end(), {"--events", opt.workdir, "--require-records"});
  step.push_back("--");
  step.insert(step.end(), srun.begin(), srun.end());
  t += "exec " + join_command(step) + "\n";
  bs.text = std::move(t);
  return bs;
}

}  // namespace mobula::slurm
