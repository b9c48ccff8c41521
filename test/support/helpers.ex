defmodule Worker.Test.Helpers do
  @moduledoc "Waiting for conditions, free ports, memory figures."

  @doc """
  Whether `fun` returns a truthy value within `timeout_ms`, polled every
  `interval_ms`: for `assert eventually(fn -> ... end)`.
  """
  def eventually(fun, timeout_ms \\ 10_000, interval_ms \\ 10) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    poll(fun, deadline, interval_ms)
  end

  defp poll(fun, deadline, interval_ms) do
    cond do
      fun.() -> true
      System.monotonic_time(:millisecond) > deadline -> false
      true -> Process.sleep(interval_ms) && poll(fun, deadline, interval_ms)
    end
  end

  @doc """
  A name no run has used: random, because the test data directory (and
  the functions stored in it) outlives a run.
  """
  def unique_name(prefix), do: prefix <> Base.encode16(:crypto.strong_rand_bytes(8))

  @doc "A TCP port on 127.0.0.1 that nothing listened on a moment ago."
  def free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end

  @doc "A UDP port on `ip` (127.0.0.1 by default) that nothing used a moment ago."
  def free_udp_port(ip \\ {127, 0, 0, 1}) do
    {:ok, socket} = :gen_udp.open(0, ip: ip)
    {:ok, port} = :inet.port(socket)
    :gen_udp.close(socket)
    port
  end

  @doc "Resident memory, in bytes, of this VM, or of the VM of `node`."
  def rss(node \\ node()) do
    os_pid = if node == node(), do: :os.getpid(), else: :erpc.call(node, :os, :getpid, [])
    {text, 0} = System.cmd("ps", ["-o", "rss=", "-p", List.to_string(os_pid)])
    String.to_integer(String.trim(text)) * 1024
  end
end
