defmodule Worker.Test.Prometheus do
  @moduledoc """
  A strict parser for the Prometheus text exposition format 0.0.4, so tests
  read the whole page the way a scraper would, and fail on anything it
  would reject.
  """

  @name ~r/^[a-zA-Z_:][a-zA-Z0-9_:]*$/

  @doc """
  Parses a page into `%{types: %{family => type}, samples: [{name, labels, value}]}`;
  raises on any malformed line or on a sample whose family has no `# TYPE`.
  """
  def parse!(text) do
    text
    |> String.split("\n")
    |> Enum.reject(&(&1 == ""))
    |> Enum.reduce(%{types: %{}, help: %{}, samples: []}, &line/2)
    |> Map.update!(:samples, &Enum.reverse/1)
  end

  defp line("# HELP " <> rest, acc) do
    [name, help] = String.split(rest, " ", parts: 2)
    valid_name!(name)
    put_in(acc.help[name], help)
  end

  defp line("# TYPE " <> rest, acc) do
    [name, type] = String.split(rest, " ")
    valid_name!(name)
    unless type in ~w(counter gauge histogram summary untyped), do: raise("bad type #{type}")
    if Map.has_key?(acc.types, name), do: raise("#{name} typed twice")
    put_in(acc.types[name], type)
  end

  defp line("#" <> _, acc), do: acc

  defp line(sample, acc) do
    {name, rest} = split_name(sample)
    valid_name!(name)
    {labels, rest} = labels(rest)
    " " <> value = rest
    value = number!(value)
    family = family(name, acc.types)
    if family == nil, do: raise("sample #{name} has no # TYPE")
    %{acc | samples: [{name, labels, value} | acc.samples]}
  end

  defp split_name(sample) do
    case :binary.match(sample, ["{", " "]) do
      {i, _} -> {binary_part(sample, 0, i), binary_part(sample, i, byte_size(sample) - i)}
    end
  end

  defp family(name, types) do
    Enum.find(
      [
        name
        | for(
            s <- ~w(_bucket _sum _count),
            String.ends_with?(name, s),
            do: String.trim_trailing(name, s)
          )
      ],
      &Map.has_key?(types, &1)
    )
  end

  defp labels("{" <> rest), do: label_pairs(rest, %{})
  defp labels(rest), do: {%{}, rest}

  defp label_pairs("}" <> rest, acc), do: {acc, rest}
  defp label_pairs("," <> rest, acc), do: label_pairs(rest, acc)

  defp label_pairs(text, acc) do
    [key, rest] = String.split(text, "=\"", parts: 2)
    valid_name!(key)
    {value, rest} = label_value(rest, "")
    label_pairs(rest, Map.put(acc, key, value))
  end

  defp label_value("\\\\" <> rest, acc), do: label_value(rest, acc <> "\\")
  defp label_value("\\\"" <> rest, acc), do: label_value(rest, acc <> "\"")
  defp label_value("\\n" <> rest, acc), do: label_value(rest, acc <> "\n")
  defp label_value("\"" <> rest, acc), do: {acc, rest}
  defp label_value("\n" <> _, _acc), do: raise("raw newline in a label value")
  defp label_value(<<c::utf8, rest::binary>>, acc), do: label_value(rest, acc <> <<c::utf8>>)

  defp number!("+Inf"), do: :infinity
  defp number!("-Inf"), do: :neg_infinity
  defp number!("NaN"), do: :nan

  defp number!(text) do
    case Float.parse(text) do
      {n, ""} -> n
      _ -> raise "bad sample value #{inspect(text)}"
    end
  end

  defp valid_name!(name),
    do: true = Regex.match?(@name, name) or raise("bad name #{inspect(name)}")

  @doc "The value of the one sample named `name` whose labels include `labels`."
  def value(%{samples: samples}, name, labels \\ %{}) do
    case for {^name, l, v} <- samples, Map.take(l, Map.keys(labels)) == labels, do: v do
      [v] -> v
      [] -> nil
      many -> raise "#{name} #{inspect(labels)} matches #{length(many)} samples"
    end
  end

  @doc "All samples named `name` whose labels include `labels`."
  def samples(%{samples: samples}, name, labels \\ %{}) do
    for {^name, l, v} <- samples, Map.take(l, Map.keys(labels)) == labels, do: {l, v}
  end
end
