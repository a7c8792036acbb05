;;; Festival helpers for src/datamodules/synth.py (loaded with `festival -b`).
;;;
;;; (synth_dump IDX TEXT WAVFILE) synthesises TEXT with the current voice, saves the
;;; waveform as a RIFF wav at the voice's own sample rate and prints, from Festival's
;;; utterance structure, one line per item (fields separated by single spaces):
;;;
;;;   BEGIN idx
;;;   SEG name segment_start end stress word      (Segment relation; pauses: word "0")
;;;   SYL syllable_start syllable_end stress      (Syllable relation)
;;;   WORD word_start word_end name               (Word relation)
;;;   END idx num_samples sample_rate
;;;
;;; (text_dump IDX TEXT) runs only Festival's text analysis (tokens -> words -> lexicon)
;;; and prints the words and their phones, without synthesising a waveform:
;;;
;;;   BEGIN idx
;;;   SEG name stress word
;;;   WORD name
;;;   END idx

(define (synth_dump_items utt)
  (mapcar
   (lambda (s)
     (format t "SEG %s %f %f %s %s\n"
             (item.name s)
             (item.feat s "segment_start")
             (item.feat s "end")
             (item.feat s "R:SylStructure.parent.stress")
             (item.feat s "R:SylStructure.parent.R:SylStructure.parent.name")))
   (utt.relation.items utt 'Segment))
  (mapcar
   (lambda (s)
     (format t "SYL %f %f %s\n"
             (item.feat s "syllable_start")
             (item.feat s "syllable_end")
             (item.feat s "stress")))
   (utt.relation.items utt 'Syllable))
  (mapcar
   (lambda (w)
     (format t "WORD %f %f %s\n"
             (item.feat w "word_start")
             (item.feat w "word_end")
             (item.name w)))
   (utt.relation.items utt 'Word)))

(define (synth_dump idx text wavfile)
  (let ((utt (SynthText text)))
    (let ((info (wave.info (utt.wave utt))))
      (utt.save.wave utt wavfile 'riff)
      (format t "BEGIN %d\n" idx)
      (synth_dump_items utt)
      (format t "END %d %d %d\n" idx
              (cadr (assoc 'num_samples info))
              (cadr (assoc 'sample_rate info))))))

(define (text_dump idx text)
  (let ((utt (eval (list (quote Utterance) (quote Text) text))))
    (Initialize utt)
    (Text utt)
    (Token_POS utt)
    (Token utt)
    (POS utt)
    (Phrasify utt)
    (Word utt)
    (Pauses utt)
    (PostLex utt)
    (format t "BEGIN %d\n" idx)
    (mapcar
     (lambda (s)
       (format t "SEG %s %s %s\n"
               (item.name s)
               (item.feat s "R:SylStructure.parent.stress")
               (item.feat s "R:SylStructure.parent.R:SylStructure.parent.name")))
     (utt.relation.items utt 'Segment))
    (mapcar
     (lambda (w) (format t "WORD %s\n" (item.name w)))
     (utt.relation.items utt 'Word))
    (format t "END %d\n" idx)))
