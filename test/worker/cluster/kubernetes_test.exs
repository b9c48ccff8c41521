defmodule Worker.Cluster.KubernetesTest do
  # Kubernetes pod discovery (Worker.Cluster.Kubernetes), against the part
  # of the API it reads, over TLS on loopback.
  use ExUnit.Case, async: false

  import Worker.Test.Helpers, only: [eventually: 1]
  alias Worker.Test.Cluster

  @moduletag :tmp_dir

  defp connected?(node, other), do: other in :erpc.call(node, Node, :list, [])

  test "kubernetes: the Core's pods, listed with the service account, are connected to",
       %{tmp_dir: dir} do
    basename = "fl_core#{System.unique_integer([:positive])}"
    {core_peer, core} = Cluster.start_node!(name: String.to_atom(basename), isolated: true)
    on_exit(fn -> Cluster.stop(core_peer) end)

    pods = [
      %{
        "metadata" => %{"name" => "core-0", "namespace" => "fl"},
        "status" => %{"podIP" => "127.0.0.1"}
      },
      # a pod with no address yet, and one with something else
      %{"metadata" => %{"name" => "core-1"}, "status" => %{"phase" => "Pending"}},
      %{"metadata" => %{"name" => "core-2"}, "status" => %{"podIP" => "not an address"}}
    ]

    api = Worker.Test.KubernetesAPI.start!(dir, pods)

    env = [
      discovery: :kubernetes,
      k8s_api: api.api,
      k8s_account_dir: api.account_dir,
      k8s_interval_ms: 200,
      core_basename: basename
    ]

    {peer, worker} = Cluster.start_worker!(Path.join(dir, "worker"), env, isolated: true)
    on_exit(fn -> Cluster.stop(peer) end)

    # the request libcluster's :pods mode makes, with the pod's token, in
    # the pod's own namespace
    assert_receive {:k8s_request, path, authorization}, 10_000
    assert path == "/api/v1/namespaces/fl/pods?labelSelector=app%3Dfl-core"
    assert authorization == "Bearer " <> api.token

    assert eventually(fn -> connected?(worker, core) end)
    assert :erpc.call(worker, Worker.Cluster, :status, []) == %{core => true}
  end

  test "kubernetes: an API whose certificate the service account's CA did not sign is " <>
         "not trusted; a wrong token is refused",
       %{tmp_dir: dir} do
    api = Worker.Test.KubernetesAPI.start!(dir, [%{"status" => %{"podIP" => "127.0.0.1"}}])
    # another CA
    other = Worker.Test.KubernetesAPI.start!(Path.join(dir, "other"), [])
    File.cp!(Path.join(other.account_dir, "ca.crt"), Path.join(api.account_dir, "ca.crt"))

    opts = %{api: api.api, selector: "app=fl-core", namespace: nil, account_dir: api.account_dir}
    assert {:error, reason} = Worker.Cluster.Kubernetes.lookup(opts)
    assert reason =~ "certificate" or reason =~ "unknown_ca", reason

    # and with its own CA, the same API answers
    File.cp!(Path.join(dir, "ca.crt"), Path.join(api.account_dir, "ca.crt"))
    assert Worker.Cluster.Kubernetes.lookup(opts) == {:ok, [{127, 0, 0, 1}]}
    # a namespace given is used, a wrong token is refused
    File.write!(Path.join(api.account_dir, "token"), "wrong")

    assert {:error, "status 401" <> _} =
             Worker.Cluster.Kubernetes.lookup(%{opts | namespace: "elsewhere"})

    assert_receive {:k8s_request, "/api/v1/namespaces/elsewhere/pods?" <> _, "Bearer wrong"}
  end
end
