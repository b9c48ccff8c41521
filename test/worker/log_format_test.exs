defmodule Worker.LogFormatTest do
  # FL_LOG_FORMAT=json: every event one line, one JSON object, whatever its
  # message and metadata hold.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  alias Worker.LogFormat

  require Logger

  @time 1_796_176_176_060_191

  # The line json/4 writes, checked to be one line, decoded.
  defp line(message, metadata \\ [], level \\ :info) do
    text =
      IO.iodata_to_binary(LogFormat.json(level, message, {{2026, 1, 1}, {0, 0, 0, 0}}, metadata))

    assert String.ends_with?(text, "\n")
    assert [_] = String.split(text, "\n", trim: true)
    {:ok, object} = Worker.JSON.decode(text)
    object
  end

  test "time in RFC 3339, UTC, with microseconds; level; message" do
    assert line("hello", time: @time) == %{
             "time" => "2026-12-02T01:49:36.060191Z",
             "level" => "info",
             "message" => "hello"
           }

    assert line("x", [time: 1_796_176_176_000_000], :warning)["time"] ==
             "2026-12-02T01:49:36.000000Z"

    # without Logger's :time, now
    now = System.os_time(:microsecond)
    {:ok, time, 0} = DateTime.from_iso8601(line("x", [], :error)["time"])
    assert (DateTime.to_unix(time, :microsecond) - now) in 0..60_000_000
    assert line("x", [], :debug)["level"] == "debug"
  end

  test "quotes, backslashes and every control character are escaped: one line, the same text" do
    controls = Enum.map(0..0x1F, &<<&1>>) ++ ["\x7F", "\u0080", "\u0085", "\u009F"]
    text = ~s(say "hi" \\ back) <> Enum.join(controls) <> "\u2028\u2029 é ü 日本 😀"
    assert line(text)["message"] == text

    raw = IO.iodata_to_binary(LogFormat.json(:info, text, nil, []))
    # none of them raw on the line, but its final newline
    raw = binary_part(raw, 0, byte_size(raw) - 1)
    for c <- controls ++ ["\u2028", "\u2029"], do: refute(String.contains?(raw, c))
    assert raw =~ ~s(say \\"hi\\" \\\\ back\\u0000\\u0001)
    assert raw =~ ~s(\\t\\n\\u000b\\f\\r)
    assert raw =~ "é ü 日本 😀"
  end

  test "invalid UTF-8: each invalid byte becomes U+FFFD, the rest is kept" do
    cases = [
      {<<"a", 0xFF, "b">>, "a\uFFFDb"},
      # a truncated sequence, at the end and in the middle
      {<<"end ", 0xE6, 0x97>>, "end \uFFFD\uFFFD"},
      {<<0xE6, 0x97, "x">>, "\uFFFD\uFFFDx"},
      # an encoded surrogate, an overlong NUL, a lone continuation byte
      {<<0xED, 0xA0, 0x80>>, "\uFFFD\uFFFD\uFFFD"},
      {<<0xC0, 0x80>>, "\uFFFD\uFFFD"},
      {<<0x80, "é">>, "\uFFFDé"}
    ]

    for {bytes, shown} <- cases do
      assert line(bytes)["message"] == shown, inspect(bytes)
      assert line("m", fl_function: bytes)["fl_function"] == shown
    end
  end

  test "any bytes at all make a valid line" do
    for size <- Enum.to_list(0..64) ++ [1_000, 100_000] do
      bytes = :crypto.strong_rand_bytes(size)
      shown = line(bytes, fl_function: bytes)
      assert is_binary(shown["message"])
      if String.valid?(bytes), do: assert(shown["message"] == bytes)
    end
  end

  test "chardata messages: nested and improper lists, code points; anything else inspected" do
    assert line(["a", ?b, [?c, "d" | "e"], 233, [[0x1F600]], ~c"f\"g"])["message"] ==
             "abcdeé😀f\"g"

    assert line(["a\n", [?\n | "b"]])["message"] == "a\n\nb"
    assert line([])["message"] == ""
    # a surrogate code point is no character
    assert line(["a", 0xD800, "b"])["message"] == "a\uFFFDb"
    # not chardata
    assert line({:not, "chardata"})["message"] == ~s({:not, "chardata"})
    assert line(["a", 0x110000])["message"] == ~s(["a", 1114112])
    assert line(["a", :b])["message"] == ~s(["a", :b])
  end

  test "every kind of metadata, as JSON" do
    pid = self()
    ref = make_ref()
    port = Port.open({:spawn, "true"}, [])

    metadata = [
      time: @time,
      fl_module: "mod \"q\"",
      fl_function: "say\nbye",
      fl_invocation: 123_456_789_012,
      fl_outcome: "exec_error",
      fl_stream: :stderr,
      float: 0.25,
      small: 1.5e-5,
      yes: true,
      no: false,
      none: nil,
      module: Worker.Server,
      erl_module: :gen_server,
      pid: pid,
      ref: ref,
      port: port,
      mfa: {Worker.Server, :init, 1},
      initial_call: {:proc_lib, :init_p, 5},
      crash_reason: {%RuntimeError{message: "boom\nagain"}, [{M, :f, 0, []}]},
      file: ~c"lib/worker/server.ex",
      domain: [:otp, :elixir],
      callers: [pid],
      error_logger: %{"key" => [1, 2], tag: :error_msg, report_cb: &inspect/1},
      report_cb: &inspect/1,
      tuple: {1, 2},
      mixed: [1, {2}, "three", &inspect/1],
      message: "not the message",
      level: :not_the_level
    ]

    assert line("m", metadata) == %{
             "time" => "2026-12-02T01:49:36.060191Z",
             "level" => "info",
             "message" => "m",
             "fl_module" => "mod \"q\"",
             "fl_function" => "say\nbye",
             "fl_invocation" => 123_456_789_012,
             "fl_outcome" => "exec_error",
             "fl_stream" => "stderr",
             "float" => 0.25,
             "small" => 1.5e-5,
             "yes" => true,
             "no" => false,
             "none" => nil,
             "module" => "Worker.Server",
             "erl_module" => "gen_server",
             "pid" => inspect(pid),
             "ref" => inspect(ref),
             "port" => inspect(port),
             "mfa" => "Worker.Server.init/1",
             "initial_call" => ":proc_lib.init_p/5",
             "crash_reason" => "** (RuntimeError) boom\nagain",
             "file" => "lib/worker/server.ex",
             "domain" => ["otp", "elixir"],
             "callers" => [inspect(pid)],
             "error_logger" => %{"tag" => "error_msg", "key" => [1, 2]},
             "mixed" => [1, "three"]
           }

    # an exit, not an exception
    assert line("m", crash_reason: {:killed, []})["crash_reason"] == "killed"

    assert line("m", crash_reason: {{:shutdown, :x}, [{M, :f, 0, []}]})["crash_reason"] ==
             "shutdown: :x"
  end

  test "never fails: a line saying what could not be formatted" do
    assert %{"level" => "error", "message" => "could not format a log event: " <> _} =
             line("x", [], "not an atom")

    assert %{"message" => "x"} = line("x", :not_a_keyword_list)
  end

  describe "through Logger's console backend" do
    setup do
      previous = Logger.level()
      Logger.configure(level: :debug)
      on_exit(fn -> Logger.configure(level: previous) end)
    end

    defp capture_json(fun) do
      [format: {LogFormat, :json}, metadata: :all, colors: [enabled: false]]
      |> capture_log(fun)
      |> String.split("\n", trim: true)
      |> Enum.map(fn line ->
        assert {:ok, %{} = object} = Worker.JSON.decode(line), line
        object
      end)
    end

    test "a crash report's many lines stay one line, with its metadata" do
      lines =
        capture_json(fn ->
          {:ok, pid} = Agent.start(fn -> :state end)
          ref = Process.monitor(pid)
          Agent.cast(pid, fn _ -> raise "boom\nsecond line" end)
          assert_receive {:DOWN, ^ref, _, _, _}
        end)

      assert [report] = Enum.filter(lines, &(&1["message"] =~ "terminating"))
      assert report["level"] == "error"
      assert report["message"] =~ "** (RuntimeError) boom\nsecond line\n"
      assert report["message"] =~ "\nLast message"
      assert report["crash_reason"] == "** (RuntimeError) boom\nsecond line"
      assert report["domain"] == ["otp"]
      assert report["pid"] =~ "#PID<"
      assert report["mfa"] == ":gen_server.error_info/8"
    end

    test "metadata from Logger.metadata and the call, at every level" do
      lines =
        capture_json(fn ->
          Logger.metadata(fl_module: "m", fl_invocation: 7)
          Logger.debug("d", fl_function: "f")
          Logger.info(["i", ?\n, "2"], fl_outcome: "ok")
          Logger.warning("w \"q\"", fl_stream: :stderr)
          Logger.error(<<"e", 0xFF>>)
        end)

      assert [
               %{"level" => "debug", "message" => "d", "fl_function" => "f"},
               %{"level" => "info", "message" => "i\n2", "fl_outcome" => "ok"},
               %{"level" => "warning", "message" => "w \"q\"", "fl_stream" => "stderr"},
               %{"level" => "error", "message" => "e\uFFFD"}
             ] = lines

      for line <- lines do
        assert %{"fl_module" => "m", "fl_invocation" => 7, "pid" => "#PID<" <> _} = line
        assert line["time"] =~ ~r/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/
      end
    end
  end

  describe "FL_LOG_FORMAT" do
    test "text or unset leaves the console as configured; json sets the formatter" do
      assert LogFormat.console(nil) == []
      assert LogFormat.console("text") == []
      assert LogFormat.console("") == []

      assert LogFormat.console("json") ==
               [format: {LogFormat, :json}, metadata: :all, colors: [enabled: false]]

      assert LogFormat.console(" json\n") == LogFormat.console("json")
    end

    test "any other value is an ArgumentError naming the variable" do
      for bad <- ["JSON", "yaml", "text,json"] do
        error = assert_raise ArgumentError, fn -> LogFormat.console(bad) end
        assert error.message =~ "FL_LOG_FORMAT"
        assert error.message =~ inspect(bad)
      end
    end
  end
end
