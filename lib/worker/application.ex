defmodule Worker.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    Worker.Config.apply_defaults()
    # before anything uses the runtime: an engine that cannot start with
    # these settings stops the boot; other settings already in force in
    # this VM are logged and kept (Worker.Config.configure_runtime/0)
    with {:error, {:runtime_unavailable, reason}} <- Worker.Config.configure_runtime() do
      raise "the native runtime cannot start with these settings " <>
              "(FL_POOL_INSTANCES, FL_MEMORY_CAP_MB, FL_MAX_MODULE_MB, FL_EPOCH_TICK_US, " <>
              "FL_POOL_KEEP_RESIDENT_KB): #{reason}"
    end

    File.mkdir_p!(Worker.Store.dir())
    # before anything writes
    Worker.Store.remove_temporary()

    with {:error, reason} <- Worker.Store.use_artifact_key() do
      raise "cannot keep the artifact key in #{Worker.Store.dir()}: #{inspect(reason)}"
    end

    Worker.Reply.init()
    Worker.Metrics.init()
    Worker.Stray.init()
    Worker.Gate.init()
    Worker.Admission.init_gate()
    Worker.Job.init_gates()

    # Only :worker is registered: any node can send a registered process
    # anything, and every gen_server (supervisors included) exits on some
    # messages (a call or system message whose reply address is not one).
    # :worker survives them all (see Worker.Server); the other processes
    # are reached through :persistent_term, by this node's code alone.
    children = [
      # first, so that /readyz answers 503 until :worker is registered
      Worker.Metrics.Endpoint,
      Worker.NodeInfo,
      Worker.Cache,
      Worker.Admission,
      Worker.Server,
      Worker.Cluster
    ]

    with {:ok, pid} <- Supervisor.start_link(children, strategy: :one_for_one) do
      :persistent_term.put({__MODULE__, :supervisor}, pid)
      {:ok, pid}
    end
  end

  @doc false
  # The top supervisor, for tests and remote consoles.
  def supervisor, do: :persistent_term.get({__MODULE__, :supervisor})
end
