defmodule Worker.Test.Cluster do
  @moduledoc """
  Real worker nodes for tests: `:peer` nodes on loopback running the
  `:worker` application, each on a data directory of the test's choosing.
  """

  @doc "Makes this test VM a distributed node (the stand-in Core)."
  def ensure_distributed! do
    unless Node.alive?() do
      {_, 0} = System.cmd("epmd", ["-daemon"])
      # a name of this VM's own, so that suites running at once never clash
      name = :"core_test_#{:os.getpid()}@127.0.0.1"
      {:ok, _} = :net_kernel.start([name, :longnames])
    end

    :ok
  end

  @doc """
  Starts a worker node; `env` is put in the `:worker` application
  environment before the application starts. Returns `{peer, node}`.
  """
  def start_worker!(data_dir, env \\ [], opts \\ []) do
    {peer, node} =
      start_node!(Keyword.put_new(opts, :name, :"worker_#{System.unique_integer([:positive])}"))

    boot!(node, data_dir, env)
    {peer, node}
  end

  @doc """
  Starts a bare node with this VM's code path. Options: `:name`, and
  `:isolated` (no `connect_all`: the node meets only the nodes it connects
  to itself, and this one).
  """
  def start_node!(opts) do
    ensure_distributed!()
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    isolation = if opts[:isolated], do: [~c"-connect_all", ~c"false"], else: []

    {:ok, peer, node} =
      :peer.start(%{
        name: opts[:name],
        host: ~c"127.0.0.1",
        longnames: true,
        args: isolation ++ paths
      })

    {peer, node}
  end

  @doc "Starts the `:worker` application on `node`."
  def boot!(node, data_dir, env) do
    :ok = :erpc.call(node, Application, :load, [:worker])

    # no gossip unless a test asks for it (on loopback)
    for {key, value} <- [data_dir: data_dir, metrics_port: 0, discovery: :none] ++ env do
      :ok = :erpc.call(node, Application, :put_env, [:worker, key, value])
    end

    :ok = :erpc.call(node, Application, :put_env, [:logger, :level, :error])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:worker])
    :ok
  end

  @doc "Kills a worker node's OS process with SIGKILL and waits until it is gone."
  def kill!(node) do
    os_pid = :erpc.call(node, :os, :getpid, [])
    Node.monitor(node, true)
    {_, 0} = System.cmd("kill", ["-9", List.to_string(os_pid)])

    receive do
      {:nodedown, ^node} -> :ok
    after
      10_000 -> raise "#{node} did not go down"
    end
  end

  @doc "Stops a worker node, ignoring one that is already gone."
  def stop(peer) do
    :peer.stop(peer)
  catch
    _, _ -> :ok
  end

  @doc "Run on a worker node: a DNS answer of 300 new loopback addresses every time."
  def set_changing_dns do
    :sys.replace_state(Worker.Cluster.server(), fn state ->
      %{state | dns: "changing.test", resolver: {__MODULE__, :changing_addresses}}
    end)

    send(Worker.Cluster.server(), :resolve)
    :ok
  end

  @doc false
  def changing_addresses(_name) do
    {:ok, for(_ <- 1..300, do: {127, :rand.uniform(254), :rand.uniform(254), :rand.uniform(254)})}
  end

  @doc "Run on a worker node: a process that holds an admission slot for `ms`."
  def hold_admission(ms) do
    spawn(fn ->
      {:ok, _slot} = Worker.Admission.enter()
      Process.sleep(ms)
    end)
  end

  @doc "Run on a worker node: points its `Worker.Cluster` at another DNS name."
  def set_core_dns(name) do
    :sys.replace_state(Worker.Cluster.server(), &%{&1 | dns: name})
    :ok
  end
end
