[
  inputs: ["{mix,.formatter}.exs", "{config,lib,mix,test}/**/*.{ex,exs}"]
]
