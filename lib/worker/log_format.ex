defmodule Worker.LogFormat do
  @moduledoc """
  The format of the worker's log lines (`FL_LOG_FORMAT`):

    * `text` (the default): Logger's console format, with the `fl_*`
      metadata (`config/config.exs`);
    * `json`: one JSON object a line, for log collectors: `json/4`.

  `config/runtime.exs` applies `console/1` to the variable.

  ## JSON lines

  Each log event is one line, one object, with these keys first:

    * `time` - when the event was logged, RFC 3339 in UTC with
      microseconds: `"2026-12-02T01:49:36.060191Z"`;
    * `level` - `"debug"`, `"info"`, `"warning"`, `"error"` (or `"notice"`,
      `"critical"`, `"alert"`, `"emergency"`);
    * `message` - the message, as one string: a multi-line message (a
      crash report, say) keeps its newlines, escaped (`\\n`).

  Then every metadata key the event has (`fl_module`, `fl_function`,
  `fl_invocation`, `fl_outcome`, `fl_stream`, and Logger's and OTP's own:
  `pid`, `mfa`, `domain`, `crash_reason`, ...), its value shown as:

  | value | JSON |
  |---|---|
  | string | string |
  | integer, float | number |
  | `true`, `false`, `nil` | `true`, `false`, `null` |
  | other atom | string, `Elixir.` left out: `"Worker.Server"` |
  | pid, reference, port | string, as `inspect/1` shows it: `"#PID<0.105.0>"` |
  | `mfa`, `initial_call` `{m, f, a}` | string: `"Worker.Server.init/1"` |
  | `crash_reason` `{reason, stacktrace}` | string: the exception's banner (`"** (RuntimeError) boom"`) or the exit reason |
  | a list of printable characters | string |
  | any other list | array of its elements |
  | map | object of its entries |

  Elements and entries that cannot be shown (functions, tuples) are left
  out, as are keys that cannot be shown (only atoms and strings can), and
  metadata named `level` or `message` (Logger's `time` is the `time` key).
  Logger's console backend writes the lines to standard output.

  Strings are written as JSON requires (`"`, `\\` and the control
  characters U+0000-U+001F escaped), and further DEL and the C1 controls
  (U+007F-U+009F) and the line and paragraph separators U+2028 and U+2029
  (`\\u2028`): so a line never breaks, whatever its text. Text that is not
  valid UTF-8 (any binary may be logged) has each invalid byte replaced by
  U+FFFD, so every line is valid JSON; the function's own lines are already
  escaped by the runtime (see docs/functions.md, logs). `json/4` never fails:
  given something it cannot format, it writes a line saying so.
  """

  @doc """
  The console backend's options for `FL_LOG_FORMAT` (unset or `"text"`:
  none, the defaults of `config/config.exs` stay). Raises an
  `ArgumentError` naming the variable on any other value.
  """
  @spec console(String.t() | nil) :: keyword()
  def console(value) do
    case value && String.trim(value) do
      v when v in [nil, "", "text"] ->
        []

      "json" ->
        [format: {__MODULE__, :json}, metadata: :all, colors: [enabled: false]]

      _ ->
        raise ArgumentError, "FL_LOG_FORMAT: expected text or json, got #{inspect(value)}"
    end
  end

  @doc """
  A Logger console formatter (`format: {Worker.LogFormat, :json}`): the
  event as one line of JSON (see the moduledoc). The message may be any
  chardata, or anything at all.
  """
  @spec json(atom(), term(), term(), keyword()) :: IO.chardata()
  def json(level, message, _timestamp, metadata) do
    [?{, pairs(level, message, metadata), "}\n"]
  rescue
    _ -> fallback(level, message)
  catch
    _, _ -> fallback(level, message)
  end

  defp pairs(level, message, metadata) do
    metadata = if is_list(metadata), do: metadata, else: []

    [
      ~s("time":"),
      time(metadata),
      ~s(","level":),
      string(Atom.to_string(level)),
      ~s(,"message":),
      message(message)
      | for {key, value} <- metadata,
            key not in [:time, :level, :message],
            is_atom(key),
            shown = metadata_value(key, value),
            shown != :skip do
          [?,, string(Atom.to_string(key)), ?:, shown]
        end
    ]
  end

  defp fallback(level, message) do
    text = "could not format a log event: " <> inspect({level, message}, limit: 50)
    time = time([])
    [~s({"time":"), time, ~s(","level":"error","message":), string(text), "}\n"]
  end

  # Logger's metadata :time (microseconds since the epoch, system time),
  # else now
  defp time(metadata) do
    micros =
      case Keyword.get(metadata, :time) do
        t when is_integer(t) -> t
        _ -> System.os_time(:microsecond)
      end

    micros |> DateTime.from_unix!(:microsecond) |> DateTime.to_iso8601()
  end

  # -- values ------------------------------------------------------------------

  defp metadata_value(key, {m, f, a})
       when key in [:mfa, :initial_call] and is_atom(m) and is_atom(f) and is_integer(a),
       do: string(Exception.format_mfa(m, f, a))

  defp metadata_value(:crash_reason, {reason, stacktrace}) when is_list(stacktrace),
    do: string(crash_reason(reason, stacktrace))

  defp metadata_value(_key, value), do: value(value)

  defp crash_reason(reason, stacktrace) do
    case Exception.normalize(:error, reason, stacktrace) do
      %ErlangError{} -> Exception.format_exit(reason)
      exception -> Exception.format_banner(:error, exception, stacktrace)
    end
  end

  defp value(true), do: "true"
  defp value(false), do: "false"
  defp value(nil), do: "null"
  defp value(v) when is_binary(v), do: string(v)
  defp value(v) when is_integer(v), do: Integer.to_string(v)
  defp value(v) when is_float(v), do: :erlang.float_to_binary(v, [:short])
  defp value(v) when is_atom(v), do: string(atom(v))
  defp value(v) when is_pid(v) or is_reference(v) or is_port(v), do: string(inspect(v))

  defp value(v) when is_list(v) do
    if v != [] and :io_lib.printable_unicode_list(v) do
      string(List.to_string(v))
    else
      array(v)
    end
  end

  defp value(v) when is_map(v) and not is_struct(v) do
    entries =
      for {k, item} <- v, key = key(k), key != :skip, shown = value(item), shown != :skip do
        [string(key), ?:, shown]
      end

    [?{, Enum.intersperse(entries, ?,), ?}]
  end

  defp value(_), do: :skip

  defp key(k) when is_atom(k), do: atom(k)
  defp key(k) when is_binary(k), do: k
  defp key(_), do: :skip

  defp atom(a) do
    case Atom.to_string(a) do
      "Elixir." <> rest -> rest
      text -> text
    end
  end

  # proper lists only; an improper tail is left out
  defp array(list), do: [?[, Enum.intersperse(elements(list), ?,), ?]]

  defp elements([head | tail]) do
    case value(head) do
      :skip -> elements(tail)
      shown -> [shown | elements(tail)]
    end
  end

  defp elements(_), do: []

  # -- strings -----------------------------------------------------------------

  # The message: chardata (binaries, code points, nested and improper
  # lists) or, failing that, anything, inspected.
  defp message(message) do
    case chardata(message, []) do
      :error -> string(inspect(message))
      escaped -> [?", escaped, ?"]
    end
  end

  defp chardata(binary, acc) when is_binary(binary), do: [acc | escape(binary)]

  # a surrogate is no character
  defp chardata(c, acc) when is_integer(c) and c in 0xD800..0xDFFF, do: [acc | "\uFFFD"]
  defp chardata(c, acc) when is_integer(c) and c in 0..0x10FFFF, do: [acc | escape(<<c::utf8>>)]

  defp chardata([], acc), do: acc

  defp chardata([head | tail], acc) do
    case chardata(head, acc) do
      :error -> :error
      acc -> chardata(tail, acc)
    end
  end

  defp chardata(_other, _acc), do: :error

  @doc false
  # A JSON string (quotes included) of a binary, valid UTF-8 or not.
  def string(binary), do: [?", escape(binary), ?"]

  # The escaped text, as iodata: runs of bytes that need nothing are
  # slices of the original binary.
  defp escape(binary), do: escape(binary, binary, 0, 0, [])

  defp escape(<<b, rest::binary>>, orig, from, len, acc)
       when b >= 0x20 and b < 0x7F and b != ?" and b != ?\\,
       do: escape(rest, orig, from, len + 1, acc)

  defp escape(<<c::utf8, rest::binary>>, orig, from, len, acc)
       when c > 0x9F and c != 0x2028 and c != 0x2029 do
    escape(rest, orig, from, len + byte_size(<<c::utf8>>), acc)
  end

  defp escape(<<c::utf8, rest::binary>>, orig, from, len, acc) do
    n = byte_size(<<c::utf8>>)
    acc = [acc, binary_part(orig, from, len) | escaped(c)]
    escape(rest, orig, from + len + n, 0, acc)
  end

  # a byte that is not part of valid UTF-8
  defp escape(<<_, rest::binary>>, orig, from, len, acc) do
    acc = [acc, binary_part(orig, from, len) | "\uFFFD"]
    escape(rest, orig, from + len + 1, 0, acc)
  end

  defp escape(<<>>, orig, 0, _len, []), do: orig
  defp escape(<<>>, orig, from, len, acc), do: [acc | binary_part(orig, from, len)]

  defp escaped(?"), do: "\\\""
  defp escaped(?\\), do: "\\\\"
  defp escaped(?\n), do: "\\n"
  defp escaped(?\r), do: "\\r"
  defp escaped(?\t), do: "\\t"
  defp escaped(?\b), do: "\\b"
  defp escaped(?\f), do: "\\f"

  defp escaped(c) do
    hex = c |> Integer.to_string(16) |> String.downcase() |> String.pad_leading(4, "0")
    ["\\u" | hex]
  end
end
