defmodule WorkerNode.TLSDistributionTest do
  # Erlang distribution over TLS (inet_tls_dist) between a Core node and a
  # worker, as docs/operations.md says to set it up: both nodes started with
  # `-proto_dist inet_tls -ssl_dist_optfile FILE`, certificates from one
  # private CA, each side checking the other's. On loopback. The nodes are
  # driven through their standard I/O (`:peer`), not distribution, since
  # this test VM speaks plain TCP distribution.
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures
  alias Worker.Test.{Certs, Core}

  @moduletag :tmp_dir
  @moduletag timeout: 120_000

  # The ssl_dist_optfile docs/operations.md shows, for a node's certificate.
  defp optfile!(dir, name, ca, {cert, key}) do
    path = Path.join(dir, "#{name}.ssl_dist.conf")

    File.write!(path, """
    [{server, [{certfile, "#{cert}"}, {keyfile, "#{key}"}, {cacertfile, "#{ca}"},
               {verify, verify_peer}, {fail_if_no_peer_cert, true}]},
     {client, [{certfile, "#{cert}"}, {keyfile, "#{key}"}, {cacertfile, "#{ca}"},
               {verify, verify_peer}]}].
    """)

    path
  end

  defp start_tls_node!(name, optfile) do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    {:ok, peer, node} =
      :peer.start(%{
        name: name,
        host: ~c"127.0.0.1",
        longnames: true,
        connection: :standard_io,
        args:
          [~c"-proto_dist", ~c"inet_tls", ~c"-ssl_dist_optfile", String.to_charlist(optfile)] ++
            [~c"-setcookie", Atom.to_charlist(Node.get_cookie())] ++ paths
      })

    on_exit(fn ->
      try do
        :peer.stop(peer)
      catch
        _, _ -> :ok
      end
    end)

    {peer, node}
  end

  defp boot_worker!(peer, data_dir) do
    :ok = :peer.call(peer, Application, :load, [:worker])

    for {key, value} <- [data_dir: data_dir, metrics_port: 0, discovery: :none] do
      :ok = :peer.call(peer, Application, :put_env, [:worker, key, value])
    end

    :ok = :peer.call(peer, Application, :put_env, [:logger, :level, :error])
    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:worker])
  end

  test "a Core and a worker over TLS distribution: the Core's calls work; a node without " <>
         "TLS, or with a certificate of another CA, cannot connect",
       %{tmp_dir: dir} do
    certs = Certs.make!(Path.join(dir, "pki"), ["core", "worker"])
    id = System.unique_integer([:positive])

    {worker_peer, worker} =
      start_tls_node!(:"worker_tls_#{id}", optfile!(dir, "worker", certs.ca, certs["worker"]))

    boot_worker!(worker_peer, Path.join(dir, "data"))

    {core_peer, core} =
      start_tls_node!(:"core_tls_#{id}", optfile!(dir, "core", certs.ca, certs["core"]))

    # the Core's own calls, made on the Core node, over the TLS link
    hello = Core.function("hello", wasm!("hello"))
    call = fn message -> :peer.call(core_peer, GenServer, :call, [{:worker, worker}, message]) end
    assert call.({:store_function, hello}) == :ok

    assert call.({:invoke, Core.without_code(hello), %{"name" => "TLS"}}) ==
             {:ok, %{"payload" => "Hello TLS!"}}

    # the link is TLS, on both ends
    {:ok, info} = :peer.call(worker_peer, :net_kernel, :node_info, [core])
    assert {:net_address, _, _, :tls, _} = info[:address]

    # this VM speaks plain TCP distribution, with the same cookie: refused
    Worker.Test.Cluster.ensure_distributed!()
    refute Node.connect(worker)

    # a TLS node whose certificate another CA signed: refused
    strangers = Certs.make!(Path.join(dir, "other-pki"), ["stranger"])

    {stranger_peer, _} =
      start_tls_node!(
        :"stranger_tls_#{id}",
        optfile!(dir, "stranger", strangers.ca, strangers["stranger"])
      )

    refute :peer.call(stranger_peer, Node, :connect, [worker])
    assert :peer.call(stranger_peer, :erlang, :nodes, []) == []
  end
end
