defmodule Functions.AbiPropertyTest do
  # PropEr throws random pointers and lengths at every host import and checks
  # each answer against what the ABI and the bounds say it must be.
  use ExUnit.Case, async: true
  @moduletag :capture_log

  alias Worker.Runtime

  @memory 65_536
  @max_response 4 * 1024 * 1024

  # pointers and lengths, weighted towards the edges of memory
  defp u32 do
    :proper_types.oneof([
      :proper_types.oneof([
        0,
        1,
        2,
        4,
        @memory - 4,
        @memory - 2,
        @memory - 1,
        @memory,
        @memory + 1
      ]),
      :proper_types.oneof([0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, @max_response, @max_response + 1]),
      :proper_types.integer(0, @memory + 16),
      :proper_types.integer(0, 0xFFFFFFFF)
    ])
  end

  defp call do
    :proper_types.oneof([
      {:get_input, [u32()]},
      {:insert_response, [u32(), u32()]},
      {:insert_error, [u32(), u32()]},
      {:console_log, [u32(), u32()]},
      {:http_request, for(_ <- 1..10, do: u32())}
    ])
  end

  @signatures %{
    get_input: {"__get_input_data", 1},
    insert_response: {"__insert_response", 2},
    insert_error: {"__insert_error", 2},
    console_log: {"__console_log", 2},
    http_request: {"__http_request", 10}
  }

  # One memory page; __invoke calls one import with constant arguments, then
  # returns 1 after __insert_error and 0 otherwise.
  defp module_for({import, args}) do
    {name, arity} = @signatures[import]
    params = String.duplicate(" i32", arity)
    consts = Enum.map_join(args, " ", &"(i32.const #{to_i32(&1)})")
    result = if import == :insert_error, do: 1, else: 0

    """
    (module
      (import "fl_imps" "#{name}" (func $f (param#{params})))
      (memory (export "memory") 1)
      (func (export "__invoke") (param i32) (result i32)
        (call $f #{consts})
        (i32.const #{result})))
    """
  end

  defp to_i32(n) when n >= 0x80000000, do: n - 0x100000000
  defp to_i32(n), do: n

  defp fits?(ptr, len), do: ptr + len <= @memory

  # What the ABI says each call must give (args are `%{}`, so the input is
  # the two bytes `{}`).
  defp expected({:get_input, [ptr]}), do: if(fits?(ptr, 2), do: :no_response, else: :trap)

  defp expected({:insert_response, [ptr, len]}),
    do: if(len <= @max_response and fits?(ptr, len), do: :response, else: :trap)

  defp expected({:insert_error, [ptr, len]}),
    do: if(len <= @max_response and fits?(ptr, len), do: :exec_error, else: :trap)

  defp expected({:console_log, [ptr, len]}),
    do: if(fits?(ptr, len), do: :no_response, else: :trap)

  defp expected(
         {:http_request, [resp, resp_len, status, _method, url, url_len, h, h_len, b, b_len]}
       ) do
    inputs_ok =
      fits?(resp_len, 4) and fits?(status, 2) and
        Enum.all?([{url, url_len}, {h, h_len}, {b, b_len}], fn {p, l} ->
          l <= @max_response and fits?(p, l)
        end)

    # memory holds zeros, never a valid URL: the request fails, the host
    # writes an empty body at resp, so resp itself must be within memory
    if inputs_ok and fits?(resp, 0), do: :no_response, else: :trap
  end

  defp classify({:error, :no_response}), do: :no_response
  defp classify({:error, {:trap, _}}), do: :trap
  defp classify({:error, {:exec_error, _}}), do: :exec_error
  defp classify({:error, {:invalid_response, _}}), do: :response
  defp classify({:ok, _}), do: :response
  defp classify(other), do: {:unexpected, other}

  # Debian's PropEr 1.2 cannot report an exception raised inside a property
  # on OTP 23+ (it calls erlang:get_stacktrace/0), so none may escape.
  defp run(call) do
    {:ok, module} = Runtime.compile(module_for(call))
    module |> Runtime.invoke(%{}, timeout: 5_000) |> classify()
  rescue
    e -> {:raised, Exception.message(e)}
  end

  test "every host import checks every pointer and length, and the VM lives" do
    property =
      :proper.forall(call(), fn call ->
        got = run(call)
        want = expected(call)

        # PropEr's ?WHENFAIL(Action, Prop) passes both delayed, as funs
        :proper.whenfail(
          fn -> IO.puts("#{inspect(call)}: got #{inspect(got)}, want #{inspect(want)}") end,
          fn -> got == want end
        )
      end)

    assert :proper.quickcheck(property, [{:numtests, 400}, {:on_output, fn _, _ -> :ok end}]) ==
             true

    # and the runtime still serves a well-behaved function
    {:ok, hello} = Runtime.compile(Worker.Test.Fixtures.wasm!("hello"))
    assert {:ok, %{"payload" => "Hello World!"}} = Runtime.invoke(hello, %{})
  end
end
