defmodule Worker.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    Worker.Config.apply_defaults()
    File.mkdir_p!(Worker.Store.dir())
    Worker.Metrics.init()

    children = [
      # first, so that /readyz answers 503 until :worker is registered
      Worker.Metrics.Endpoint,
      {Task.Supervisor, name: Worker.Tasks},
      {DynamicSupervisor, name: Worker.Handlers, strategy: :one_for_one, max_children: 10_000},
      Worker.NodeInfo,
      Worker.Functions,
      Worker.Admission,
      Worker.Server,
      Worker.Cluster
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Worker.Supervisor)
  end
end
