[
  inputs: ["{mix,.formatter}.exs", "{bench,config,lib,mix,test}/**/*.{ex,exs}"]
]
