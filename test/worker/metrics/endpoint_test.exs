defmodule Worker.Metrics.EndpointTest do
  # The interface the metrics endpoint listens on: FL_METRICS_ADDR, read by
  # Worker.Config, and what a worker node bound to it accepts.
  use ExUnit.Case, async: false

  import Worker.Test.Helpers
  alias Worker.Test.Cluster

  @moduletag :tmp_dir

  # another address of this machine: 127.0.0.2 is loopback too on Linux
  # (all of 127/8), but not 127.0.0.1
  @other_loopback {127, 0, 0, 2}

  ipv6_loopback? =
    case :gen_tcp.listen(0, [:inet6, ip: {0, 0, 0, 0, 0, 0, 0, 1}]) do
      {:ok, socket} -> :gen_tcp.close(socket) == :ok
      {:error, _} -> false
    end

  @ipv6_loopback? ipv6_loopback?

  describe "FL_METRICS_ADDR" do
    test "takes an IPv4 or IPv6 address; unset or blank, the default" do
      at = fn value -> Worker.Config.from_env(%{"FL_METRICS_ADDR" => value})[:metrics_addr] end
      assert at.("127.0.0.1") == {127, 0, 0, 1}
      assert at.(" 10.1.2.3\n") == {10, 1, 2, 3}
      assert at.("::1") == {0, 0, 0, 0, 0, 0, 0, 1}
      assert at.("fd00::2") == {0xFD00, 0, 0, 0, 0, 0, 0, 2}
      assert at.("::") == {0, 0, 0, 0, 0, 0, 0, 0}
      assert at.("") == nil
      refute Keyword.has_key?(Worker.Config.from_env(%{}), :metrics_addr)
    end

    test "a malformed value is an ArgumentError that names the variable" do
      for bad <- ["localhost", "1.2.3.4.5", "256.0.0.1", "::g", "127.0.0.1:4021", "[::1]"] do
        error =
          assert_raise ArgumentError, fn ->
            Worker.Config.from_env(%{"FL_METRICS_ADDR" => bad})
          end

        assert error.message =~ "FL_METRICS_ADDR", bad
        assert error.message =~ inspect(bad), bad
      end
    end
  end

  describe "a worker node's endpoint" do
    test "bound to 127.0.0.1, answers there and refuses on the machine's other addresses",
         %{tmp_dir: dir} do
      port = start_worker!(dir, metrics_addr: {127, 0, 0, 1})

      assert {:ok, 200} == healthz({127, 0, 0, 1}, port)
      assert {:error, :econnrefused} == connect(@other_loopback, port)

      for address <- other_ipv4_addresses() do
        assert {:error, :econnrefused} == connect(address, port), inspect(address)
      end
    end

    test "by default, on every IPv4 interface", %{tmp_dir: dir} do
      port = start_worker!(dir, [])

      for address <- [{127, 0, 0, 1}, @other_loopback | other_ipv4_addresses()] do
        assert {:ok, 200} == healthz(address, port), inspect(address)
      end
    end

    @tag skip: if(@ipv6_loopback?, do: false, else: "no IPv6 loopback on this machine")
    test "bound to ::1, answers over IPv6 and not over IPv4", %{tmp_dir: dir} do
      port = start_worker!(dir, metrics_addr: {0, 0, 0, 0, 0, 0, 0, 1})

      assert {:ok, 200} == healthz({0, 0, 0, 0, 0, 0, 0, 1}, port)
      assert {:error, :econnrefused} == connect({127, 0, 0, 1}, port)
    end
  end

  defp start_worker!(dir, env) do
    port = free_port()
    {peer, _node} = Cluster.start_worker!(dir, [metrics_port: port] ++ env)
    on_exit(fn -> Cluster.stop(peer) end)
    port
  end

  # The IPv4 addresses of this machine's interfaces that are up, loopback
  # excepted: none, on some machines.
  defp other_ipv4_addresses do
    {:ok, interfaces} = :inet.getifaddrs()

    for {_name, opts} <- interfaces,
        :up in Keyword.get(opts, :flags, []),
        {:addr, {a, _, _, _} = address} <- opts,
        a != 127,
        do: address
  end

  defp connect(address, port) do
    case :gen_tcp.connect(address, port, [:binary, active: false], 5_000) do
      {:ok, socket} -> {:ok, socket}
      {:error, reason} -> {:error, reason}
    end
  end

  # GET /healthz over a connection of its own: the status code
  defp healthz(address, port) do
    with {:ok, socket} <- connect(address, port) do
      :ok = :gen_tcp.send(socket, "GET /healthz HTTP/1.0\r\n\r\n")
      {:ok, response} = :gen_tcp.recv(socket, 0, 10_000)
      :gen_tcp.close(socket)
      [_, code | _] = String.split(response, " ", parts: 3)
      {:ok, String.to_integer(code)}
    end
  end
end
