defmodule Worker.StrayTest do
  # The count and the rate limit are node-wide (Worker.Stray.init/0 runs at
  # start): tests read differences, and none runs beside another.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Worker.Stray

  @per_second 10

  defmodule Echo do
    use GenServer
    def start_link(state), do: GenServer.start_link(__MODULE__, state)
    @impl true
    def init(state), do: {:ok, state}
    @impl true
    def handle_call(:get, _from, state), do: {:reply, state, state}
    def handle_call(request, _from, state), do: Stray.call(__MODULE__, request, state)
    @impl true
    def handle_cast(request, state), do: Stray.cast(__MODULE__, request, state)
    @impl true
    def handle_info(message, state), do: Stray.info(__MODULE__, message, state)
  end

  defp dropped_lines(log), do: length(Regex.scan(~r/dropped an unexpected message/, log))
  defp silenced_lines(log), do: length(Regex.scan(~r/more unexpected messages this second/, log))

  # Runs `fun` within one second of the monotonic clock, right after one
  # begins (so that nothing was logged in it before), and returns its log.
  # A run that straddles two seconds is tried again.
  defp within_one_second(fun, tries \\ 5) do
    start = System.monotonic_time(:second)
    wait_for_second_after(start)
    second = System.monotonic_time(:second)
    log = capture_log(fun)

    cond do
      System.monotonic_time(:second) == second -> log
      tries > 1 -> within_one_second(fun, tries - 1)
      true -> flunk("could not run within one second")
    end
  end

  defp wait_for_second_after(second) do
    if System.monotonic_time(:second) == second do
      Process.sleep(5)
      wait_for_second_after(second)
    end
  end

  test "each dropped message is counted" do
    before = Stray.count()
    capture_log(fn -> for n <- 1..3, do: assert(Stray.drop("here", {:message, n}) == :ok) end)
    assert Stray.count() == before + 3
  end

  test "a dropped message is logged with where it arrived" do
    log = within_one_second(fn -> Stray.drop("Some.Place", {:unexpected, 42}) end)
    assert log =~ "Some.Place: dropped an unexpected message: {:unexpected, 42}"
  end

  test "at most #{@per_second} lines a second, then one saying the rest are not logged" do
    before = Stray.count()
    log = within_one_second(fn -> for n <- 1..(3 * @per_second), do: Stray.drop("flood", n) end)

    assert dropped_lines(log) == @per_second
    assert silenced_lines(log) == 1
    # the first ones are logged; every one is counted
    assert log =~ "flood: dropped an unexpected message: 1\n"
    assert log =~ "flood: dropped an unexpected message: #{@per_second}\n"
    refute log =~ "flood: dropped an unexpected message: #{@per_second + 1}\n"
    assert Stray.count() == before + 3 * @per_second

    # a new second logs again
    log = within_one_second(fn -> Stray.drop("flood", :again) end)
    assert dropped_lines(log) == 1
    assert silenced_lines(log) == 0
  end

  test "a string is logged up to 200 printable bytes, a collection up to 8 items" do
    long = String.duplicate("a", 1_000)

    log =
      within_one_second(fn ->
        Stray.drop("here", long)
        Stray.drop("here", Enum.to_list(1..100))
        Stray.drop("here", {:nested, %{text: String.duplicate("b", 300)}})
      end)

    assert log =~ String.duplicate("a", 200)
    refute log =~ String.duplicate("a", 201)
    assert log =~ "[1, 2, 3, 4, 5, 6, 7, 8, ...]"
    assert log =~ String.duplicate("b", 200)
    refute log =~ String.duplicate("b", 201)
  end

  describe "GenServer catch-alls" do
    test "a call is answered with a bad request; a cast and an info are dropped; all count" do
      before = Stray.count()

      log =
        within_one_second(fn ->
          assert Stray.call(Some.Server, :what, :state) ==
                   {:reply, {:error, {:bad_request, "unknown request"}}, :state}

          assert Stray.cast(Some.Server, :cast, :state) == {:noreply, :state}
          assert Stray.info(Some.Server, :info, :state) == {:noreply, :state}
        end)

      assert Stray.count() == before + 3

      for message <- [":what", ":cast", ":info"] do
        assert log =~ "Some.Server: dropped an unexpected message: #{message}"
      end
    end

    test "a real server survives them and keeps answering" do
      pid = start_supervised!({Echo, :kept})
      before = Stray.count()

      capture_log(fn ->
        assert GenServer.call(pid, :unknown) == {:error, {:bad_request, "unknown request"}}
        GenServer.cast(pid, :unknown)
        send(pid, :unknown)
        assert GenServer.call(pid, :get) == :kept
      end)

      assert Stray.count() == before + 3
    end
  end
end
